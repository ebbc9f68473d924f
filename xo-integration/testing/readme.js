'use strict'

// README.md's examples are executable: between the `examples` markers, every `xo-cli vgpu.…` and
// `xe …` line of a `sh` block runs, in order, on a fresh simulator pool (the `xe` lines through the
// simulator's `xe` stand-in). The block after an `xo-cli` line is its output: for a success, what
// xo-cli prints (the value through util.inspect, as xo-cli renders it); for a line marked
// `# fails`, the JSON-RPC error (code, message, data.code, data.details). The test compares them,
// timestamps aside; scripts/readme-examples.js writes the real ones into the file, and the method
// table from the methods' declaration.

const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const path = require('node:path')
const { inspect } = require('node:util')

const { FUNCTIONS, POOL_PARAM, methodName, methodParams } = require('../src/functions.js')
const { REPO_DIR, python } = require('./harness.js')

const BEGIN = '<!-- examples -->'
const END = '<!-- /examples -->'
const METHODS_BEGIN = '<!-- methods -->'
const METHODS_END = '<!-- /methods -->'
const TIMESTAMP = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z/g
const XE = path.join(REPO_DIR, 'tests', 'xapi_sim', 'xe')

// Shell words, with '…' and "…" quoting, a backslash escape, and `#` starting a comment.
function shellWords(line) {
  const words = []
  let word = null
  let comment = ''
  for (let i = 0; i < line.length; i++) {
    const c = line[i]
    if (c === "'" || c === '"') {
      const end = line.indexOf(c, i + 1)
      assert.ok(end !== -1, `unterminated quote: ${line}`)
      word = (word ?? '') + line.slice(i + 1, end)
      i = end
    } else if (c === '\\') {
      word = (word ?? '') + line[++i]
    } else if (/\s/.test(c)) {
      if (word !== null) words.push(word)
      word = null
    } else if (c === '#' && word === null) {
      comment = line.slice(i + 1).trim()
      break
    } else {
      word = (word ?? '') + c
    }
  }
  if (word !== null) words.push(word)
  return { words, comment }
}

// xo-cli's parameters: `name=value`, `json:` for a JSON value, `true` / `false` as booleans.
function xoCliParams(args) {
  const params = {}
  for (const arg of args) {
    const m = /^([^=]+)=([^]*)$/.exec(arg)
    assert.ok(m, `invalid arg: ${arg}`)
    let value = m[2]
    if (value.startsWith('json:')) value = JSON.parse(value.slice(5))
    else if (value === 'true') value = true
    else if (value === 'false') value = false
    params[m[1]] = value
  }
  return params
}

// The steps: { kind: 'xo-cli' | 'xe', line, words, fails, output: { start, end, lang, text } }
// (output: the fenced block after an xo-cli line, its lines [start, end) in the file).
function parseReadme(text) {
  const lines = text.split('\n')
  const begin = lines.indexOf(BEGIN)
  const end = lines.indexOf(END)
  assert.ok(begin !== -1 && end > begin, `README.md needs the ${BEGIN} … ${END} section`)
  const steps = []
  let fence = null
  let block = []
  for (let i = begin + 1; i < end; i++) {
    const m = /^```(\S*)\s*$/.exec(lines[i])
    if (m && fence === null) {
      fence = { lang: m[1], start: i + 1 }
      block = []
      continue
    }
    if (m) {
      if (fence.lang === 'sh') {
        block.forEach((line, k) => {
          const { words, comment } = shellWords(line)
          if (words[0] === 'xo-cli' || words[0] === 'xe') {
            steps.push({ kind: words[0], line: fence.start + k + 1, text: line, words, fails: comment === 'fails' })
          }
        })
      } else {
        const last = steps[steps.length - 1]
        if (last && last.kind === 'xo-cli' && last.output === undefined) {
          last.output = { lang: fence.lang, start: fence.start, end: i, text: block.join('\n') }
        }
      }
      fence = null
      continue
    }
    if (fence !== null) block.push(lines[i])
  }
  return steps
}

const render = value => inspect(value, { colors: false, depth: null, sorted: true })

const errorDoc = error => ({
  code: error.code,
  message: error.message,
  data: { code: error.data?.code, details: error.data?.details },
})

// Runs the steps in order; returns for each xo-cli step { text, lang } as it must appear.
async function runSteps(pool, steps) {
  const outputs = []
  for (const step of steps) {
    if (step.kind === 'xe') {
      const env = {
        ...process.env,
        XE_SIM_URL: pool.sim.url,
        XE_SIM_USER: 'root',
        XE_SIM_PASSWORD: pool.fixture.users.root,
        PYTHONPATH: path.join(REPO_DIR, 'tests'),
      }
      const out = spawnSync(python(), [XE, ...step.words.slice(1)], { env, encoding: 'utf8' })
      assert.equal(out.status, 0, `README line ${step.line}: ${step.text}\n${out.stderr}`)
      outputs.push(undefined)
      continue
    }
    const [, method, ...args] = step.words
    assert.ok(method.startsWith('vgpu.'), `README line ${step.line}: ${step.text}`)
    const json = args[0] === '--json'
    const params = xoCliParams(json ? args.slice(1) : args)
    let result, error
    try {
      result = await pool.xo.call(method, params)
    } catch (e) {
      error = e
    }
    if (step.fails) {
      assert.ok(error, `README line ${step.line} should fail: ${step.text}`)
      outputs.push({ lang: 'json', text: JSON.stringify(errorDoc(error), null, 2) })
    } else {
      assert.ok(!error, `README line ${step.line}: ${step.text}: ${error?.message}`)
      outputs.push(
        json ? { lang: 'json', text: JSON.stringify(result, null, 2) } : { lang: 'js', text: render(result) }
      )
    }
  }
  return outputs
}

// The README's method table, from the declaration the methods are made of.
function methodsTable() {
  const rows = FUNCTIONS.map(fn => {
    const params = Object.entries(methodParams(fn))
      .filter(([name]) => name !== POOL_PARAM)
      .map(([name, schema]) => (schema.optional ? `\`${name}\`` : `**\`${name}\`**`))
    const where = fn.local ? 'on `host`' : ''
    const notes = [fn.long ? 'task' : '', where].filter(Boolean).join(', ')
    const plugin = `\`${fn.name}\`${notes ? ` (${notes})` : ''}`
    return `| \`vgpu.${methodName(fn.name)}\` | ${fn.description} | ${params.join(', ') || '—'} | ${plugin} |`
  })
  return [
    '| method | what it does | parameters besides `pool` (required in bold) | plugin function |',
    '|---|---|---|---|',
    ...rows,
  ].join('\n')
}

// The file with the method table between its markers replaced.
function withMethodsTable(text) {
  const begin = text.indexOf(METHODS_BEGIN)
  const end = text.indexOf(METHODS_END)
  assert.ok(begin !== -1 && end > begin, `README.md needs the ${METHODS_BEGIN} … ${METHODS_END} markers`)
  return text.slice(0, begin + METHODS_BEGIN.length) + '\n' + methodsTable() + '\n' + text.slice(end)
}

const normalize = text => text.replace(TIMESTAMP, '<timestamp>')

// The file with each xo-cli step's block replaced by the real output.
function rewrite(text, steps, outputs) {
  const lines = text.split('\n')
  const edits = []
  steps.forEach((step, i) => {
    if (step.kind !== 'xo-cli') return
    assert.ok(step.output, `README line ${step.line}: no output block after ${step.text}`)
    edits.push([step.output.start - 1, step.output.end + 1, ['```' + outputs[i].lang, outputs[i].text, '```']])
  })
  for (const [start, end, replacement] of edits.reverse()) {
    lines.splice(start, end - start, ...replacement)
  }
  return lines.join('\n')
}

module.exports = { normalize, parseReadme, rewrite, runSteps, shellWords, withMethodsTable, xoCliParams }
