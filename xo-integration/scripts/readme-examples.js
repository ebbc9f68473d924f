'use strict'

// Writes into README.md its method table and the outputs of its examples, as a real run gives them: the same run as
// test/readme.test.js (simulator pool, real plugin and core, xen-api, the fake xo-server).
//   node scripts/readme-examples.js

const fs = require('node:fs')
const path = require('node:path')

const { Pool } = require('../testing/harness.js')
const { parseReadme, rewrite, runSteps, withMethodsTable } = require('../testing/readme.js')

const README = path.join(__dirname, '..', 'README.md')

async function main() {
  const text = fs.readFileSync(README, 'utf8')
  const steps = parseReadme(text)
  const pool = await Pool.start()
  try {
    const outputs = await runSteps(pool, steps)
    fs.writeFileSync(README, withMethodsTable(rewrite(text, steps, outputs)))
    console.log(`README.md: ${steps.filter(s => s.kind === 'xo-cli').length} outputs written`)
  } finally {
    await pool.stop()
  }
}

main().catch(error => {
  console.error(error)
  process.exitCode = 1
})
