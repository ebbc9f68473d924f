'use strict'

// README.md's examples run as written and print what the README shows (timestamps aside); every
// method has one. `node scripts/readme-examples.js` rewrites the outputs from a real run.

const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { after, before, test } = require('node:test')

const { FUNCTIONS, methodName } = require('../src/functions.js')
const { Pool, readFixture } = require('../testing/harness.js')
const { normalize, parseReadme, runSteps, withMethodsTable } = require('../testing/readme.js')

const text = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8')
const steps = parseReadme(text)
const xoSteps = steps.filter(s => s.kind === 'xo-cli')

let pool
before(async () => {
  pool = await Pool.start()
})
after(async () => {
  await pool?.stop()
})

test('every method has an example, and every example is a method', () => {
  const shown = new Set(xoSteps.filter(s => !s.fails).map(s => s.words[1]))
  const methods = FUNCTIONS.map(f => `vgpu.${methodName(f.name)}`)
  assert.deepEqual([...shown].sort(), methods.sort())
  assert.ok(xoSteps.some(s => s.fails), 'an error example')
})

test('the method table is the one the methods are made of', () => {
  assert.equal(withMethodsTable(text), text)
})

test('every example names the sample pool and has its output', () => {
  const { uuid } = readFixture('three_host_pool.json').pool
  for (const step of xoSteps) {
    assert.ok(step.words.includes(`pool=${uuid}`), `line ${step.line}: ${step.text}`)
    assert.ok(step.output, `line ${step.line}: no output block`)
  }
})

test('the examples print what the README shows', async () => {
  const outputs = await runSteps(pool, steps)
  steps.forEach((step, i) => {
    if (step.kind !== 'xo-cli') return
    assert.equal(step.output.lang, outputs[i].lang, `line ${step.line}: ${step.text}`)
    assert.equal(normalize(step.output.text), normalize(outputs[i].text), `line ${step.line}: ${step.text}`)
  })
})

test('no xo-cli vgpu line hides outside the examples', () => {
  const outside = text.split('<!-- examples -->')[0] + (text.split('<!-- /examples -->')[1] ?? '')
  for (const line of outside.split('\n')) {
    assert.ok(!/^\s*xo-cli vgpu\.\w+ .*pool=[0-9a-f-]{36}/.test(line), line)
  }
})
