'use strict'

// The plugin inside the fake xo-server with a recording XAPI: what load() and unload() register,
// what each method sends to the host plugin, and what callers get back, errors included.

const assert = require('node:assert/strict')
const { describe, test } = require('node:test')

const createPlugin = require('../index.js')
const { FUNCTIONS, methodName } = require('../src/functions.js')
const { USER, FakeXo } = require('../testing/fake-xo.js')
const { MASTER, MEMBER, POOL, VM, StubXapi, ref, xapiError } = require('../testing/stub-xapi.js')

const ALL_METHODS = FUNCTIONS.map(f => `vgpu.${methodName(f.name)}`).sort()
const failWith = error => () => {
  throw error
}
const READ_ENDPOINTS = FUNCTIONS.filter(f => f.read).map(f => `GET /rest/v0/plugins/vgpu/pools/{id}/${f.name}`).sort()

function setup({ answer, rest = true } = {}) {
  const xo = new FakeXo({ rest })
  const xapi = new StubXapi(answer)
  xo.addXapi(xapi)
  const plugin = createPlugin({ xo, staticConfig: {}, getDataDir: async () => '/nonexistent' })
  plugin.load()
  return { xo, xapi, plugin }
}

describe('load and unload', () => {
  test('load registers every method, admin only, described, with params xo-server compiles', () => {
    const { xo } = setup()
    assert.deepEqual(Object.keys(xo.apiMethods).sort(), ALL_METHODS)
    for (const name of ALL_METHODS) {
      const m = xo.apiMethods[name]
      assert.equal(m.permission, 'admin', name)
      assert.equal(typeof m.description, 'string', name)
      assert.ok(m.description.length > 10, name)
      assert.equal(typeof m.validate, 'function', name)
      assert.equal(m.params.pool.type, 'string', name)
      assert.ok(!m.params.pool.optional, name)
    }
  })

  test('unload removes them all, a second load works, a second unload does nothing', () => {
    const { xo, plugin } = setup()
    plugin.unload()
    assert.deepEqual(Object.keys(xo.apiMethods), [])
    assert.deepEqual(xo.restEndpoints, [])
    plugin.load()
    assert.deepEqual(Object.keys(xo.apiMethods).sort(), ALL_METHODS)
    plugin.unload()
    xo.addApiMethods({ other: { m: () => 1 } })
    plugin.unload()
    assert.deepEqual(Object.keys(xo.apiMethods), ['other.m'])
  })

  test('a method name already taken makes load fail and leaves nothing of the plugin behind', () => {
    const xo = new FakeXo()
    xo.addApiMethods({ vgpu: { status: () => 'someone else' } })
    const plugin = createPlugin({ xo, staticConfig: {}, getDataDir: async () => '' })
    assert.throws(() => plugin.load(), /API method vgpu\.status already exists/)
    assert.deepEqual(Object.keys(xo.apiMethods), ['vgpu.status'])
    assert.deepEqual(xo.restEndpoints, [])
  })

  test('a REST route that cannot be registered takes the methods back out', () => {
    const xo = new FakeXo()
    xo.registerRestRoutes([{ method: 'get', endpoint: 'plugins/vgpu/pools/{id}/scan', callback: () => 1 }])
    const plugin = createPlugin({ xo, staticConfig: {}, getDataDir: async () => '' })
    assert.throws(() => plugin.load(), /already registered/)
    assert.deepEqual(Object.keys(xo.apiMethods), [])
  })

  test('the read functions are REST routes where xo-server has them, and only there', () => {
    assert.deepEqual(setup().xo.restEndpoints.sort(), READ_ENDPOINTS)
    const { xo } = setup({ rest: false })
    assert.deepEqual(xo.restEndpoints, [])
    assert.deepEqual(Object.keys(xo.apiMethods).sort(), ALL_METHODS)
  })
})

describe('what the methods send', () => {
  const cases = [
    ['vgpu.scan', {}, 'scan', {}],
    ['vgpu.status', {}, 'status', {}],
    ['vgpu.listPools', {}, 'list-pools', {}],
    ['vgpu.list', { vgpuPool: 'b', priority: 2 }, 'list', { pool: 'b', priority: '2' }],
    ['vgpu.showPool', { vgpuPool: 'A' }, 'show-pool', { pool: 'A' }],
    ['vgpu.show', { vmName: 'web 01' }, 'show', { 'vm-name': 'web 01' }],
    [
      'vgpu.register',
      { vm: VM.uuid, vmName: 'stored', vgpuPool: 'B', priority: 'high', vmId: 7, restart: true },
      'register',
      {
        'vm-uuid': VM.uuid,
        'vm-name': 'stored',
        pool: 'B',
        priority: 'high',
        'vm-id': '7',
        restart: 'true',
        yes: 'true',
      },
    ],
    ['vgpu.setVmId', { vm: VM.uuid, vmId: '12' }, 'set-vm-id', { 'vm-uuid': VM.uuid, 'vm-id': '12' }],
    [
      'vgpu.setPool',
      { vmName: 'x', vgpuPool: 'A', restart: false },
      'set-pool',
      { 'vm-name': 'x', pool: 'A', restart: 'false' },
    ],
    ['vgpu.setPriority', { vm: VM.uuid, priority: 'low' }, 'set-priority', { 'vm-uuid': VM.uuid, priority: 'low' }],
    [
      'vgpu.update',
      { vm: VM.uuid, vmId: 3, priority: '0' },
      'update',
      { 'vm-uuid': VM.uuid, 'vm-id': '3', priority: '0' },
    ],
    ['vgpu.remove', { vm: VM.uuid, restart: true }, 'remove', { 'vm-uuid': VM.uuid, restart: 'true', yes: 'true' }],
    ['vgpu.sync', { all: true, dryRun: true }, 'sync', { all: 'true', 'dry-run': 'true' }],
    ['vgpu.adopt', { vm: VM.uuid, dryRun: true }, 'adopt', { 'vm-uuid': VM.uuid, 'dry-run': 'true' }],
    ['vgpu.adopt', { all: true }, 'adopt', { all: 'true' }],
    ['vgpu.adopt', { vmName: 'old box', dryRun: false }, 'adopt', { 'vm-name': 'old box', 'dry-run': 'false' }],
    ['vgpu.rebuild', { dryRun: true }, 'rebuild', { 'dry-run': 'true' }],
    ['vgpu.rebuild', {}, 'rebuild', {}],
    ['vgpu.list', { quarantined: true }, 'list', { quarantined: 'true' }],
    ['vgpu.setWeight', { vm: VM.uuid, weight: 80 }, 'set-weight', { 'vm-uuid': VM.uuid, weight: '80' }],
    ['vgpu.setWeight', { vmName: 'web 01', weight: '5' }, 'set-weight', { 'vm-name': 'web 01', weight: '5' }],
    [
      'vgpu.setRateLimit',
      { vm: VM.uuid, rate: 25, queueDepth: 0 },
      'set-rate-limit',
      { 'vm-uuid': VM.uuid, rate: '25', 'queue-depth': '0' },
    ],
    ['vgpu.setRateLimit', { vmName: 'x', rate: '0' }, 'set-rate-limit', { 'vm-name': 'x', rate: '0' }],
    ['vgpu.quarantine', { vm: VM.uuid }, 'quarantine', { 'vm-uuid': VM.uuid }],
    ['vgpu.clearQuarantine', { vmName: 'x' }, 'clear-quarantine', { 'vm-name': 'x' }],
    ['vgpu.showWeights', {}, 'show-weights', {}],
    ['vgpu.showWeights', { vgpuPool: 'A' }, 'show-weights', { pool: 'A' }],
    ['vgpu.showRateLimits', { vgpuPool: 'B' }, 'show-rate-limits', { pool: 'B' }],
  ]
  for (const [name, params, fn, args] of cases) {
    test(`${name} -> ${fn} on the master, string arguments`, async () => {
      const { xo, xapi } = setup({ answer: () => '{"ok":true}' })
      assert.deepEqual(await xo.call(name, { pool: POOL.uuid, ...params }), { ok: true })
      assert.equal(xapi.calls.length, 1)
      const [call] = xapi.calls
      assert.equal(call.method, 'host.call_plugin')
      assert.deepEqual(call.args, [ref(MASTER.uuid), 'vgpu', fn, args])
      const long = FUNCTIONS.find(f => f.name === fn).long
      assert.equal(call.via, long ? 'callAsync' : 'call')
    })
  }

  // The functions that act on the host they are called on: on the host given, by UUID or name-label.
  const localCases = [
    [{ host: MEMBER.uuid }, MEMBER],
    [{ host: MEMBER.name_label }, MEMBER],
    [{ host: MASTER.name_label }, MASTER],
  ]
  for (const [params, host] of localCases) {
    test(`vgpu.refresh host=${params.host} -> refresh on ${host.name_label}, no arguments`, async () => {
      const { xo, xapi } = setup({ answer: () => '{"host":"h"}' })
      assert.deepEqual(await xo.call('vgpu.refresh', { pool: POOL.uuid, ...params }), { host: 'h' })
      assert.deepEqual(xapi.calls, [
        { via: 'callAsync', method: 'host.call_plugin', args: [ref(host.uuid), 'vgpu', 'refresh', {}] },
      ])
    })
  }

  // Their own arguments go with them; the plugin's `host` argument is never sent (XO calls the
  // host itself).
  const localArgs = [
    ['vgpu.refresh', { reload: true }, 'refresh', { reload: 'true' }],
    ['vgpu.mediator', { action: 'health' }, 'mediator', { action: 'health' }],
    [
      'vgpu.mediator',
      { action: 'metrics', prometheus: true, allHosts: false },
      'mediator',
      { action: 'metrics', prometheus: 'true', 'all-hosts': 'false' },
    ],
    ['vgpu.mediator', { action: 'reload', allHosts: true }, 'mediator', { action: 'reload', 'all-hosts': 'true' }],
  ]
  for (const [name, params, fn, args] of localArgs) {
    test(`${name} ${JSON.stringify(params)} -> ${fn} on the host given, as a task`, async () => {
      const { xo, xapi } = setup({ answer: () => '[]' })
      assert.deepEqual(await xo.call(name, { pool: POOL.uuid, host: MEMBER.name_label, ...params }), [])
      assert.deepEqual(xapi.calls, [
        { via: 'callAsync', method: 'host.call_plugin', args: [ref(MEMBER.uuid), 'vgpu', fn, args] },
      ])
    })
  }

  test('vgpu.refresh: a host that is not one of the pool\'s is refused before any call, naming it', async () => {
    const { xo, xapi } = setup()
    for (const host of ['nowhere', VM.uuid, POOL.uuid, 'STUB-MEMBER']) {
      await assert.rejects(xo.call('vgpu.refresh', { pool: POOL.uuid, host }), e => {
        assert.equal(e.code, -32000)
        assert.equal(e.message, `host "${host}" is not a host of pool ${POOL.name_label} (${POOL.uuid})`)
        assert.equal(e.data.code, 'VGPU_INVALID_ARGUMENT')
        assert.deepEqual(e.data.details, {
          argument: 'host',
          value: host,
          pool: POOL.uuid,
          reason: 'not a host of this pool',
          hosts: [MASTER, MEMBER].map(h => ({ uuid: h.uuid, name_label: h.name_label })),
        })
        return true
      })
    }
    assert.equal(xapi.calls.length, 0)
  })

  test('vgpu.refresh: a name-label two hosts share is refused; their UUIDs still work', async () => {
    const { xo, xapi } = setup()
    const twin = { uuid: '5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d', name_label: MEMBER.name_label }
    xapi.objects.all[twin.uuid] = { ...twin, $id: twin.uuid, $ref: ref(twin.uuid), $type: 'host' }
    await assert.rejects(xo.call('vgpu.refresh', { pool: POOL.uuid, host: MEMBER.name_label }), e => {
      assert.equal(e.data.code, 'VGPU_INVALID_ARGUMENT')
      assert.equal(
        e.message,
        `several hosts of pool ${POOL.name_label} (${POOL.uuid}) are named "${MEMBER.name_label}": give the host's UUID`
      )
      assert.deepEqual(e.data.details.hosts.map(h => h.uuid).sort(), [MEMBER.uuid, twin.uuid].sort())
      return true
    })
    assert.equal(xapi.calls.length, 0)
    await xo.call('vgpu.refresh', { pool: POOL.uuid, host: twin.uuid })
    assert.equal(xapi.calls[0].args[0], ref(twin.uuid))
  })

  test('vgpu.refresh: errors name the host it ran on', async () => {
    const { xo } = setup({ answer: failWith(xapiError('XENAPI_MISSING_PLUGIN', ['vgpu'])) })
    await assert.rejects(xo.call('vgpu.refresh', { pool: POOL.uuid, host: MEMBER.name_label }), e => {
      assert.equal(e.message, `vgpu plugin not installed on ${MEMBER.name_label} (${MEMBER.uuid})`)
      assert.deepEqual(e.data.details, { host: MEMBER.uuid, host_name: MEMBER.name_label, function: 'refresh' })
      return true
    })
  })

  test('the calls cover every method', () => {
    assert.deepEqual([...new Set([...cases, ...localArgs].map(c => c[0]))].sort(), ALL_METHODS)
  })

  test('a method follows the pool master XO knows', async () => {
    const { xo, xapi } = setup()
    xo.overrideObject(POOL.uuid, { master: MEMBER.uuid })
    await xo.call('vgpu.list', { pool: POOL.uuid })
    assert.equal(xapi.calls[0].args[0], ref(MEMBER.uuid))
  })

  test('methods use the xo they were made with, whatever `this` is', async () => {
    const { xo, xapi } = setup()
    const fn = xo.apiMethods['vgpu.list'].fn
    assert.deepEqual(await fn.call(undefined, { pool: POOL.uuid }), {})
    assert.deepEqual(await fn.call({ unrelated: true }, { pool: POOL.uuid }), {})
    assert.equal(xapi.calls.length, 2)
  })
})

describe('what callers get for bad calls', () => {
  const rejectsWithCode = async (promise, code) =>
    assert.rejects(promise, e => {
      assert.equal(e.code, code, e.message)
      return true
    })

  test('xo-cli values need no json: (strings for numbers), but types are enforced', async () => {
    const { xo, xapi } = setup()
    await xo.call('vgpu.setVmId', { pool: POOL.uuid, vm: VM.uuid, vmId: '7', restart: true })
    await xo.call('vgpu.list', { pool: POOL.uuid, priority: '1' })
    assert.equal(xapi.calls.length, 2)
    for (const bad of [
      { vm: VM.uuid }, // vmId missing
      { vm: VM.uuid, vmId: '' }, // empty string
      { vm: VM.uuid, vmId: 7.5 },
      { vm: VM.uuid, vmId: '7', restart: 'true' }, // a string where a boolean goes
      { vm: VM.uuid, vmId: '7', yes: true }, // not a parameter
      { vm: VM.uuid, vmId: '7', vgpuPool: 'A' }, // not this method's
      { vm: VM.uuid, vmId: '7', host: MASTER.uuid }, // only for the functions that run on a host given
    ]) {
      await rejectsWithCode(xo.call('vgpu.setVmId', { pool: POOL.uuid, ...bad }), 10)
    }
    for (const bad of [{}, { host: '' }, { host: MEMBER.uuid, dryRun: true }]) {
      await rejectsWithCode(xo.call('vgpu.refresh', { pool: POOL.uuid, ...bad }), 10)
    }
    for (const bad of [
      { action: 'health' }, // host missing, even with allHosts: the host that asks the others
      { action: 'health', allHosts: true },
      { host: MEMBER.uuid }, // action missing
      { host: MEMBER.uuid, action: 'health', prometheus: 'yes' },
      { host: MEMBER.uuid, action: 'health', vm: VM.uuid },
    ]) {
      await rejectsWithCode(xo.call('vgpu.mediator', { pool: POOL.uuid, ...bad }), 10)
    }
    for (const bad of [{ vm: VM.uuid }, { vm: VM.uuid, weight: 50.5 }, { vm: VM.uuid, weight: '' }]) {
      await rejectsWithCode(xo.call('vgpu.setWeight', { pool: POOL.uuid, ...bad }), 10)
    }
    await rejectsWithCode(xo.call('vgpu.setRateLimit', { pool: POOL.uuid, vm: VM.uuid, queueDepth: 4 }), 10)
    await rejectsWithCode(xo.call('vgpu.list', { pool: POOL.uuid, quarantined: 'true' }), 10)
    await rejectsWithCode(xo.call('vgpu.scan', {}), 10)
    assert.equal(xapi.calls.length, 2, 'nothing reached XAPI')
  })

  test('only admins', async () => {
    const { xo, xapi } = setup()
    await rejectsWithCode(xo.call('vgpu.scan', { pool: POOL.uuid }, { user: USER }), 2)
    assert.equal(xapi.calls.length, 0)
  })

  test('an unknown pool id, or the id of something else, is no such pool', async () => {
    const { xo, xapi } = setup()
    for (const id of ['4b8a6f7e-0000-4000-8000-000000000000', VM.uuid, MASTER.uuid]) {
      await assert.rejects(xo.call('vgpu.scan', { pool: id }), e => {
        assert.equal(e.code, 1)
        assert.equal(e.message, `no such pool ${id}`)
        assert.deepEqual(e.data, { id, type: 'pool' })
        return true
      })
    }
    assert.equal(xapi.calls.length, 0)
  })
})

describe('errors from XAPI and the host plugin', () => {
  test('a VGPU_* failure keeps its message, code and details', async () => {
    const details = { vm_uuid: VM.uuid, next_free_vm_id: 2 }
    const { xo } = setup({
      answer: failWith(xapiError('VGPU_VM_ID_IN_USE', ['VM ID 7 already in use', JSON.stringify(details)])),
    })
    await assert.rejects(xo.call('vgpu.setVmId', { pool: POOL.uuid, vm: VM.uuid, vmId: 7 }), e => {
      assert.equal(e.code, -32000)
      assert.equal(e.message, 'VM ID 7 already in use')
      assert.equal(e.data.code, 'VGPU_VM_ID_IN_USE')
      assert.deepEqual(e.data.details, details)
      return true
    })
  })

  for (const code of ['XENAPI_MISSING_PLUGIN', 'UNKNOWN_XENAPI_PLUGIN_FUNCTION']) {
    test(`${code}: the plugin is not installed on the master, by name and uuid`, async () => {
      const param = code === 'XENAPI_MISSING_PLUGIN' ? 'vgpu' : 'status'
      const { xo } = setup({ answer: failWith(xapiError(code, [param])) })
      await assert.rejects(xo.call('vgpu.status', { pool: POOL.uuid }), e => {
        assert.match(e.message, new RegExp(`^vgpu plugin not installed on ${MASTER.name_label} \\(${MASTER.uuid}\\)`))
        assert.equal(e.data.code, code)
        assert.equal(e.data.details.host, MASTER.uuid)
        return true
      })
    })
  }

  test('an answer that is not JSON is an error, never a silent null', async () => {
    const { xo } = setup({ answer: () => 'not json' })
    await assert.rejects(xo.call('vgpu.list', { pool: POOL.uuid }), e => {
      assert.equal(e.data.code, 'VGPU_INTERNAL')
      assert.match(e.message, /not JSON/)
      return true
    })
  })

  test('XAPI errors xo-server knows become its own errors (HOST_OFFLINE)', async () => {
    const { xo } = setup({ answer: failWith(xapiError('HOST_OFFLINE', [ref(MASTER.uuid)])) })
    await assert.rejects(xo.call('vgpu.list', { pool: POOL.uuid }), e => {
      assert.equal(e.code, 18)
      assert.deepEqual(e.data, { objectId: MASTER.uuid })
      return true
    })
  })

  test('other XAPI errors pass through with their code and params', async () => {
    const params = ['non-zero exit', '', 'Traceback …']
    const { xo } = setup({ answer: failWith(xapiError('XENAPI_PLUGIN_FAILURE', params)) })
    await assert.rejects(xo.call('vgpu.scan', { pool: POOL.uuid }), e => {
      assert.equal(e.data.code, 'XENAPI_PLUGIN_FAILURE')
      assert.deepEqual(e.data.params, params)
      return true
    })
  })
})

describe('REST', () => {
  test('a read function answers with the plugin JSON; its errors carry the code', async () => {
    let answer = () => '[{"vm_id":1}]'
    const { xo, xapi } = setup({ answer: call => answer(call) })
    assert.deepEqual(await xo.rest('GET', `/rest/v0/plugins/vgpu/pools/${POOL.uuid}/list?vgpuPool=A&unrelated=1`), {
      status: 200,
      body: [{ vm_id: 1 }],
    })
    assert.deepEqual(xapi.calls[0].args[3], { pool: 'A' })
    answer = failWith(xapiError('VGPU_NOT_REGISTERED', ['VM x is not registered', '{"vm_uuid":"x"}']))
    assert.deepEqual(await xo.rest('GET', `/rest/v0/plugins/vgpu/pools/${POOL.uuid}/show?vm=x`), {
      status: 404,
      body: { error: 'VM x is not registered', data: { code: 'VGPU_NOT_REGISTERED', details: { vm_uuid: 'x' } } },
    })
    answer = failWith(xapiError('XENAPI_MISSING_PLUGIN', ['vgpu']))
    const missing = await xo.rest('GET', `/rest/v0/plugins/vgpu/pools/${POOL.uuid}/status`)
    assert.equal(missing.status, 503)
    assert.match(missing.body.error, /^vgpu plugin not installed on stub-master/)
  })

  test('mediator, a read that runs on the host given: host and action in the query', async () => {
    const { xo, xapi } = setup({ answer: () => '[{"host":"h","ok":true}]' })
    const base = `/rest/v0/plugins/vgpu/pools/${POOL.uuid}/mediator`
    assert.deepEqual(await xo.rest('GET', `${base}?host=${MEMBER.name_label}&action=metrics&prometheus=true`), {
      status: 200,
      body: [{ host: 'h', ok: true }],
    })
    assert.deepEqual(xapi.calls, [
      {
        via: 'callAsync',
        method: 'host.call_plugin',
        args: [ref(MEMBER.uuid), 'vgpu', 'mediator', { action: 'metrics', prometheus: 'true' }],
      },
    ])
    assert.equal((await xo.rest('GET', `${base}?action=health`)).status, 422, 'host is required')
    assert.equal((await xo.rest('GET', `${base}?host=${MEMBER.uuid}`)).status, 422, 'action is required')
    assert.equal(xapi.calls.length, 1)
  })

  test('unknown pool, non-admins and missing required query parameters are refused', async () => {
    const { xo, xapi } = setup()
    assert.equal((await xo.rest('GET', '/rest/v0/plugins/vgpu/pools/nope/scan')).status, 404)
    assert.equal((await xo.rest('GET', `/rest/v0/plugins/vgpu/pools/${POOL.uuid}/scan`, { user: USER })).status, 403)
    assert.equal((await xo.rest('GET', `/rest/v0/plugins/vgpu/pools/${POOL.uuid}/show-pool`)).status, 422)
    assert.equal(xapi.calls.length, 0)
  })
})
