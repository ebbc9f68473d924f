'use strict'

// The XO methods against the core's function table (`vgpu-admin functions --format json`): every
// function has its method and every method its function; each method's parameters are exactly the
// function's arguments in XO's spelling, required exactly when the function requires them, plus a
// required `host` for the functions that act on the host they are called on (`local`).

const assert = require('node:assert/strict')
const { test } = require('node:test')

const createPlugin = require('../index.js')
const { ARGUMENTS, FUNCTIONS, HOST_PARAM, callOptions, methodName } = require('../src/functions.js')
const { FakeXo } = require('../testing/fake-xo.js')
const { functionTable } = require('../testing/harness.js')

const table = functionTable()

// SPEC §6: the XO parameter of each plugin argument (`pool` is XO's pool id, so the registry pool
// is `vgpuPool`; `yes` is implied by `restart: true`).
const PARAM_OF = {
  'vm-uuid': 'vm',
  'vm-name': 'vmName',
  pool: 'vgpuPool',
  priority: 'priority',
  'vm-id': 'vmId',
  restart: 'restart',
  'dry-run': 'dryRun',
  all: 'all',
  // SPEC §10
  weight: 'weight',
  rate: 'rate',
  'queue-depth': 'queueDepth',
  quarantined: 'quarantined',
  action: 'action',
  prometheus: 'prometheus',
  'all-hosts': 'allHosts',
  reload: 'reload',
}
// `host` (which host's mediator to ask) is XO's own `host` of a local function: XO calls that
// host's plugin itself.
const NOT_A_PARAM = new Set(['yes', 'host'])

function loadedMethods() {
  const xo = new FakeXo()
  createPlugin({ xo, staticConfig: {}, getDataDir: async () => '' }).load()
  return xo.apiMethods
}

test('the table lists the functions and arguments this suite knows how to check', () => {
  assert.ok(table.functions.length >= 16, 'fewer functions than SPEC §4 and §9 list')
  const names = table.functions.map(f => f.name)
  for (const fn of ['refresh', 'adopt', 'rebuild']) {
    assert.ok(names.includes(fn), `SPEC §9: ${fn}`)
  }
  for (const fn of ['set-weight', 'set-rate-limit', 'quarantine', 'clear-quarantine', 'show-weights', 'show-rate-limits', 'mediator']) {
    assert.ok(names.includes(fn), `SPEC §10: ${fn}`)
  }
  for (const fn of table.functions) {
    assert.equal(typeof fn.local, 'boolean', `${fn.name}: local`)
  }
  for (const key of table.arguments.map(a => a.key)) {
    assert.ok(key in PARAM_OF || NOT_A_PARAM.has(key), `the core has an argument ${key} that has no XO parameter here`)
  }
})

test('every plugin function has its method and every method its function', () => {
  const methods = loadedMethods()
  const expected = table.functions.map(f => `vgpu.${methodName(f.name)}`).sort()
  assert.deepEqual(Object.keys(methods).sort(), expected)
  assert.deepEqual(FUNCTIONS.map(f => f.name).sort(), table.functions.map(f => f.name).sort())
})

test('method names are the function names in camelCase (SPEC §6)', () => {
  const methods = loadedMethods()
  for (const [fn, method] of [
    ['set-vm-id', 'setVmId'],
    ['list-pools', 'listPools'],
    ['show-pool', 'showPool'],
    ['set-priority', 'setPriority'],
    ['list', 'list'],
    ['scan', 'scan'],
    ['refresh', 'refresh'],
    ['adopt', 'adopt'],
    ['rebuild', 'rebuild'],
    ['set-weight', 'setWeight'],
    ['set-rate-limit', 'setRateLimit'],
    ['quarantine', 'quarantine'],
    ['clear-quarantine', 'clearQuarantine'],
    ['show-weights', 'showWeights'],
    ['show-rate-limits', 'showRateLimits'],
    ['mediator', 'mediator'],
  ]) {
    assert.equal(methodName(fn), method)
    assert.ok(`vgpu.${method}` in methods, `vgpu.${method}`)
  }
})

test('each method takes the pool plus exactly its function arguments, required as in the table', () => {
  const methods = loadedMethods()
  for (const fn of table.functions) {
    const { params } = methods[`vgpu.${methodName(fn.name)}`]
    const want = { pool: true }
    if (fn.local) want.host = true
    for (const key of fn.required) want[PARAM_OF[key]] = true
    for (const key of [...fn.optional, ...fn.flags]) {
      if (!NOT_A_PARAM.has(key)) want[PARAM_OF[key]] = false
    }
    const got = Object.fromEntries(Object.entries(params).map(([name, schema]) => [name, !schema.optional]))
    assert.deepEqual(got, want, `vgpu.${methodName(fn.name)} (${fn.name})`)
  }
})

test('flags are booleans, everything else a (non-empty) string or number', () => {
  const flags = new Set(table.arguments.filter(a => a.flag).map(a => a.key))
  assert.deepEqual(
    Object.keys(ARGUMENTS).sort(),
    table.arguments.map(a => a.key).filter(k => !NOT_A_PARAM.has(k)).sort()
  )
  for (const [key, { param, schema }] of Object.entries(ARGUMENTS)) {
    assert.equal(param, PARAM_OF[key])
    if (flags.has(key)) {
      assert.equal(schema.type, 'boolean', key)
    } else {
      assert.ok([].concat(schema.type).includes('string'), key)
    }
  }
})

test('functions that change things or walk the pool run as XAPI tasks; reads are REST routes', () => {
  const ours = Object.fromEntries(FUNCTIONS.map(f => [f.name, f]))
  for (const fn of table.functions) {
    const mine = ours[fn.name]
    assert.equal(Boolean(mine.read), !fn.mutating, `${fn.name}: read`)
    if (fn.mutating || fn.vm === 'none' && fn.xapi) {
      assert.equal(mine.long, true, `${fn.name} may take long: callAsync`)
    }
  }
  const read = FUNCTIONS.filter(f => f.read).map(f => f.name)
  for (const fn of ['scan', 'list', 'show', 'list-pools', 'show-pool', 'status']) {
    assert.ok(read.includes(fn), fn)
  }
})

test('a function that acts on the host it is called on takes a required `host` and runs there', () => {
  const methods = loadedMethods()
  const ours = Object.fromEntries(FUNCTIONS.map(f => [f.name, f]))
  const local = table.functions.filter(f => f.local).map(f => f.name)
  assert.ok(local.includes('refresh'), 'SPEC §9: refresh is local')
  assert.ok(local.includes('mediator'), 'SPEC §10: mediator is local')
  for (const name of ['adopt', 'rebuild', 'register', 'list', 'set-weight', 'quarantine', 'show-weights']) {
    assert.ok(!local.includes(name), `${name} goes to the master`)
  }
  for (const fn of table.functions) {
    assert.equal(Boolean(ours[fn.name].local), fn.local, `${fn.name}: local`)
    const { params } = methods[`vgpu.${methodName(fn.name)}`]
    if (fn.local) {
      assert.equal(params[HOST_PARAM]?.type, 'string', `vgpu.${methodName(fn.name)} takes host`)
      assert.ok(!params[HOST_PARAM].optional, `vgpu.${methodName(fn.name)}: host is required`)
      assert.equal(callOptions(ours[fn.name], { host: 'h1' }).host, 'h1', fn.name)
    } else {
      assert.ok(!(HOST_PARAM in params), `vgpu.${methodName(fn.name)} runs on the master: no host`)
      assert.equal(callOptions(ours[fn.name], { host: 'h1' }).host, undefined, fn.name)
    }
  }
})
