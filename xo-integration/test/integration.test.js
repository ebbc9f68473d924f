'use strict'

// xo-server-vgpu through the connector xo-server itself uses: a real xen-api `Xapi` connected to
// the XAPI simulator (a pool of three hosts: a master and two members), whose host.call_plugin
// (sync, and Async with xapi's tasks and events) runs the real plugin/vgpu over this checkout's
// vgpu-admin. Every method, its success and each class of error callers can get; the master's
// replicas on the other hosts (SPEC §9).

const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { after, before, beforeEach, describe, test } = require('node:test')

const { FUNCTIONS, methodName } = require('../src/functions.js')
const { USER } = require('../testing/fake-xo.js')
const { Pool, functionTable } = require('../testing/harness.js')

let pool
before(async () => {
  pool = await Pool.start()
})
after(async () => {
  await pool?.stop()
})
beforeEach(async () => {
  await pool.reset()
})

const call = (method, params = {}, opts) => pool.xo.call(`vgpu.${method}`, { pool: pool.poolId, ...params }, opts)

// Rejects with the plugin's error: JSON-RPC -32000, the core's message, data.code and data.details.
async function vgpuError(promise, code) {
  let error
  await assert.rejects(promise, e => {
    error = e
    return true
  })
  assert.equal(error.code, -32000, error.message)
  assert.equal(error.data.code, code, error.message)
  assert.equal(error.data.message, error.message)
  return error
}

const register = (vm, vgpuPool, priority, extra = {}) =>
  call('register', { vm: pool.vm(vm), vgpuPool, priority, ...extra })

// After each committed change the master asks every other host to refresh its replica (SPEC §9):
// those calls, made by the master's plugin, apart from the others.
const isReplicaRefresh = c => c.from === 'host' && c.fn === 'refresh'
const withoutReplicaRefreshes = calls => calls.filter(c => !isReplicaRefresh(c))
const replicaRefreshes = calls =>
  calls.filter(isReplicaRefresh).map(c => [c.method, c.host]).sort((a, b) => a[1].localeCompare(b[1]))

describe('the pool', () => {
  test('XO sees the three hosts through xen-api, the master first', () => {
    const xoPool = pool.xo.getObject(pool.poolId, 'pool')
    assert.equal(xoPool.master, pool.host('fwd-01'))
    for (const name of ['fwd-01', 'fwd-02', 'fwd-03']) {
      assert.equal(pool.xo.getObject(pool.host(name), 'host').name_label, name)
    }
  })
})

describe('every method, on the master', () => {
  test('scan: every VM, the one with a device among the unregistered', async () => {
    const scan = await call('scan')
    assert.deepEqual(scan.summary, {
      total_vms: 4, registered: 0, unregistered: 4, stale: 0, configured: 0, drift: 0, not_applied: 0, mirror_drift: 0,
    })
    const gamma = scan.unregistered.find(v => v.vm_name === 'gamma')
    assert.equal(gamma.device_model_args, '-device vgpu-cuda,addr=5,pool_id=B,priority=low,vm_id=7')
    assert.deepEqual(scan.registered, [])
  })

  test('register, then the reads: list, show, listPools, showPool, status', async () => {
    const alpha = await register('alpha', 'B', 'high', { vmId: '7' })
    assert.equal(alpha.vm_uuid, pool.vm('alpha'))
    assert.equal(alpha.vm_id, 7)
    assert.equal(alpha.pool, 'B')
    assert.equal(alpha.priority, 'high')
    assert.equal(alpha.applied, true)
    assert.equal(alpha.pending_restart, true)
    assert.equal(alpha.device_model_args, '-device vgpu-cuda,addr=5,pool_id=B,priority=high,vm_id=7')
    // by name, next free id, integer priority as JSON callers may send it
    const beta = await call('register', { vmName: 'beta', vgpuPool: 'a', priority: 0 })
    assert.deepEqual([beta.vm_uuid, beta.vm_id, beta.pool, beta.priority], [pool.vm('beta'), 1, 'A', 'low'])

    const list = await call('list')
    assert.deepEqual(list.map(r => [r.vm_name, r.pool, r.priority, r.vm_id]), [
      ['beta', 'A', 'low', 1],
      ['alpha', 'B', 'high', 7],
    ])
    assert.deepEqual((await call('list', { vgpuPool: 'B' })).map(r => r.vm_name), ['alpha'])
    assert.deepEqual((await call('list', { priority: 'low' })).map(r => r.vm_name), ['beta'])

    const show = await call('show', { vmName: 'alpha' })
    assert.equal(show.status, 'configured')
    assert.equal(show.power_state, 'Running')
    assert.deepEqual(show.drift, [])

    const pools = await call('listPools')
    assert.deepEqual(pools.map(p => [p.pool_id, p.vm_count, p.by_priority]), [
      ['A', 1, { low: 1, medium: 0, high: 0 }],
      ['B', 1, { low: 0, medium: 0, high: 1 }],
    ])
    const b = await call('showPool', { vgpuPool: 'b' })
    assert.equal(b.pool_id, 'B')
    assert.deepEqual(b.vms.map(v => v.vm_uuid), [pool.vm('alpha')])

    const status = await call('status')
    assert.equal(status.summary.registered, 2)
    assert.equal(status.summary.unregistered, 2)
    assert.deepEqual(status.pools.map(p => p.vm_count), [1, 1])
  })

  test('setVmId, setPool, setPriority, update change the registry and the device', async () => {
    await register('alpha', 'A', 'low')
    assert.equal((await call('setVmId', { vm: pool.vm('alpha'), vmId: 42 })).vm_id, 42)
    assert.equal((await call('setPool', { vmName: 'alpha', vgpuPool: 'B' })).pool, 'B')
    const prio = await call('setPriority', { vm: pool.vm('alpha'), priority: 'medium' })
    assert.equal(prio.device_model_args, '-device vgpu-cuda,addr=5,pool_id=B,priority=medium,vm_id=42')
    const upd = await call('update', { vm: pool.vm('alpha'), vgpuPool: 'A', priority: 'high', vmId: '9' })
    assert.deepEqual([upd.pool, upd.priority, upd.vm_id], ['A', 'high', 9])
    const vm = await pool.sim.call('sim.get_vm', pool.vm('alpha'))
    assert.equal(vm.platform['device-model-args'], '-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=9')
  })

  test('restart: true restarts the running VM (the call is its confirmation)', async () => {
    const alpha = await register('alpha', 'A', 'high', { restart: true })
    assert.equal(alpha.restarted, true)
    assert.equal(alpha.pending_restart, false)
    const calls = await pool.pluginCalls()
    assert.deepEqual(withoutReplicaRefreshes(calls).map(c => [c.method, c.fn, c.args.restart, c.args.yes]), [
      ['Async.host.call_plugin', 'register', 'true', 'true'],
    ])
    const log = (await pool.sim.callLog()).map(e => e.method)
    assert.ok(log.includes('VM.clean_shutdown') && log.includes('VM.start'), log.join(' '))
  })

  test('sync (dry run, one VM, all) puts a VM in drift back', async () => {
    await register('alpha', 'A', 'high')
    await pool.sim.call('sim.set_vm', pool.vm('alpha'), {
      platform: { 'device-model-args': '-device vgpu-cuda,addr=5,pool_id=B,priority=high,vm_id=1' },
    })
    const dry = await call('sync', { all: true, dryRun: true })
    assert.equal(dry.dry_run, true)
    assert.equal(dry.results[0].status_before, 'drift')
    assert.equal((await pool.sim.call('sim.get_vm', pool.vm('alpha'))).platform['device-model-args'],
      '-device vgpu-cuda,addr=5,pool_id=B,priority=high,vm_id=1')
    const done = await call('sync', { vm: pool.vm('alpha') })
    assert.equal(done.dry_run, false)
    assert.equal(done.failed, 0)
    assert.equal((await call('show', { vm: pool.vm('alpha') })).status, 'configured')
  })

  test('remove takes the registration and the device away', async () => {
    await register('alpha', 'A', 'high')
    const removed = await call('remove', { vmName: 'alpha' })
    assert.equal(removed.removed, true)
    assert.equal(removed.device_model_args, null)
    assert.deepEqual(await call('list'), [])
  })

  test('long functions ran as XAPI tasks, the others as plain calls, all on the master', async () => {
    await register('alpha', 'A', 'high')
    await call('list')
    await call('status')
    const calls = await pool.pluginCalls()
    assert.deepEqual(calls.filter(c => c.from === 'xo').map(c => [c.method, c.host, c.fn]), [
      ['Async.host.call_plugin', 'fwd-01', 'register'],
      ['host.call_plugin', 'fwd-01', 'list'],
      ['Async.host.call_plugin', 'fwd-01', 'status'],
    ])
    // Besides them, only the master's own requests to the members to refresh their replicas.
    assert.deepEqual(replicaRefreshes(calls), [
      ['host.call_plugin', 'fwd-02'],
      ['host.call_plugin', 'fwd-03'],
    ])
    assert.equal(calls.length, 5)
    // The tasks are gone afterwards (xen-api destroys what it watched).
    assert.equal((await pool.sim.call('sim.stats')).tasks, 0)
  })

  test('every method was exercised above', () => {
    const source = fs.readFileSync(__filename, 'utf8')
    for (const fn of FUNCTIONS) {
      const name = methodName(fn.name)
      assert.ok(source.includes(`call('${name}'`) || (name === 'register' && source.includes('register(')), name)
    }
  })
})

describe('a pool with members: the registry lives on the master, the members hold replicas', () => {
  test('XO asks only the master; the master has the members refresh their replicas', async () => {
    const beta = await register('beta', 'B', 'low')
    await call('list')
    assert.ok(fs.existsSync(pool.dbs['fwd-01']))
    const calls = await pool.pluginCalls()
    assert.deepEqual([...new Set(calls.filter(c => c.from === 'xo').map(c => c.host))], ['fwd-01'])
    assert.deepEqual(replicaRefreshes(calls), [
      ['host.call_plugin', 'fwd-02'],
      ['host.call_plugin', 'fwd-03'],
    ])
    assert.deepEqual(
      beta.replicas.map(r => [r.host, r.name, r.ok, r.error]).sort((a, b) => a[1].localeCompare(b[1])),
      [
        [pool.host('fwd-02'), 'fwd-02', true, null],
        [pool.host('fwd-03'), 'fwd-03', true, null],
      ]
    )
    assert.ok(fs.existsSync(pool.dbs['fwd-02']) && fs.existsSync(pool.dbs['fwd-03']))
  })

  test('when XO still shows an old master, the member it calls forwards to the real one', async () => {
    await register('alpha', 'A', 'high', { vmId: 5 })
    pool.xo.overrideObject(pool.poolId, { master: pool.host('fwd-03') })
    await pool.sim.call('sim.clear_call_log')
    assert.deepEqual((await call('list')).map(r => [r.vm_uuid, r.vm_id]), [[pool.vm('alpha'), 5]])
    assert.deepEqual((await register('beta', 'B', 'low')).vm_id, 1)
    const calls = await pool.pluginCalls()
    assert.deepEqual(withoutReplicaRefreshes(calls).map(c => [c.method, c.host, c.fn, c.from]), [
      ['host.call_plugin', 'fwd-03', 'list', 'xo'],
      ['host.call_plugin', 'fwd-01', 'list', 'host'],
      ['Async.host.call_plugin', 'fwd-03', 'register', 'xo'],
      ['host.call_plugin', 'fwd-01', 'register', 'host'],
    ])
    assert.deepEqual(replicaRefreshes(calls), [
      ['host.call_plugin', 'fwd-02'],
      ['host.call_plugin', 'fwd-03'],
    ])
  })

  test('after a change of master, XO (through XAPI events) calls the new one', async () => {
    await pool.sim.call('sim.set_master', pool.host('fwd-02'))
    await pool.xapi.barrier()
    assert.equal(pool.xo.getObject(pool.poolId, 'pool').master, pool.host('fwd-02'))
    await call('listPools')
    assert.deepEqual((await pool.pluginCalls()).map(c => [c.host, c.fn]), [['fwd-02', 'list-pools']])
  })
})

describe('errors', () => {
  test('the plugin refuses: each code reaches the caller with message and details', async () => {
    const alphaUuid = pool.vm('alpha')
    await register('alpha', 'B', 'high', { vmId: 7 })

    const taken = call('register', { vmName: 'delta', vgpuPool: 'A', priority: 'low', vmId: '7' })
    let e = await vgpuError(taken, 'VGPU_VM_ID_IN_USE')
    assert.equal(e.message, `VM ID 7 already in use by VM ${alphaUuid} (alpha)`)
    assert.equal(e.data.details.next_free_vm_id, 1)

    e = await vgpuError(register('alpha', 'A', 'low'), 'VGPU_ALREADY_REGISTERED')
    assert.equal(e.data.details.vm_id, 7)

    e = await vgpuError(call('show', { vmName: 'beta' }), 'VGPU_NOT_REGISTERED')
    assert.equal(e.data.details.vm_uuid, pool.vm('beta'))

    const nowhere = '00000000-0000-4000-8000-000000000000'
    e = await vgpuError(call('show', { vm: nowhere }), 'VGPU_VM_NOT_FOUND')
    assert.match(e.message, new RegExp(nowhere))

    e = await vgpuError(call('setPool', { vm: alphaUuid, vgpuPool: 'Q' }), 'VGPU_INVALID_ARGUMENT')
    assert.deepEqual(e.data.details, { argument: 'pool', reason: 'expected A or B', value: 'Q' })
    await vgpuError(call('show', {}), 'VGPU_INVALID_ARGUMENT')
    await vgpuError(call('sync', {}), 'VGPU_INVALID_ARGUMENT')

    const twin = await pool.sim.call('sim.add_vm', { name_label: 'alpha', power_state: 'Halted' })
    e = await vgpuError(call('show', { vmName: 'alpha' }), 'VGPU_AMBIGUOUS_VM_NAME')
    assert.deepEqual(e.data.details.candidates.map(c => c.vm_uuid).sort(), [twin.uuid, alphaUuid].sort())

    await pool.sim.call('sim.set_vm', alphaUuid, { power_state: 'Paused' })
    e = await vgpuError(call('setPriority', { vm: alphaUuid, priority: 'low', restart: true }), 'VGPU_VM_STATE')
    assert.equal(e.data.details.power_state, 'paused')
    assert.equal((await call('show', { vm: alphaUuid })).priority, 'high', 'nothing changed')

    const fault = { method: 'VM.get_all_records_where', code: 'INTERNAL_ERROR', params: ['boom'] }
    await pool.sim.call('sim.inject_fault', fault)
    e = await vgpuError(call('scan'), 'VGPU_XAPI_ERROR')
    assert.equal(e.data.details.xapi_code, 'INTERNAL_ERROR')

    const master = pool.host('fwd-01')
    await pool.sim.call('sim.set_plugin_env', master, { VGPU_DB: pool.tmp })
    e = await vgpuError(call('list'), 'VGPU_DATABASE_ERROR')
    assert.equal(e.data.details.path, pool.tmp)

    await pool.sim.call('sim.set_plugin_env', master, { VGPU_CONFIG: pool.tmp })
    e = await vgpuError(call('list'), 'VGPU_CONFIG_ERROR')
  })

  test('every error code is exercised above or cannot come through XO', () => {
    const source = fs.readFileSync(__filename, 'utf8')
    const unreachable = {
      CONFIRMATION_REQUIRED: 'XO calls are not interactive: restart: true sends yes=true',
      NO_FREE_VM_ID: 'needs all 4294967295 vm_ids taken',
      INTERNAL: 'a bug of the core',
    }
    for (const code of functionTable().error_codes) {
      assert.ok(code in unreachable || source.includes(`'VGPU_${code}'`), code)
    }
  })

  test('host without the plugin: a clear error for plain calls and tasks', async () => {
    const master = pool.host('fwd-01')
    await pool.sim.call('sim.set_plugin_dir', master, pool.emptyPluginDir)
    for (const method of ['list', 'scan']) {
      const e = await vgpuError(call(method), 'XENAPI_MISSING_PLUGIN')
      assert.equal(e.message, `vgpu plugin not installed on fwd-01 (${master})`)
      assert.deepEqual(e.data.details, { host: master, host_name: 'fwd-01', function: method })
    }
  })

  test('host with an older plugin that lacks the function: the same clear error', async () => {
    const master = pool.host('fwd-01')
    await pool.sim.call('sim.set_plugin_dir', master, pool.oldPluginDir)
    assert.deepEqual((await call('scan')).registered, [], 'the function it has still works')
    for (const method of ['list', 'status']) {
      const e = await vgpuError(call(method), 'UNKNOWN_XENAPI_PLUGIN_FUNCTION')
      const expected = `^vgpu plugin not installed on fwd-01 \\(${master}\\): .*no function "${method}"`
      assert.match(e.message, new RegExp(expected))
    }
  })

  test('an unknown pool id is XO\'s no such object, before any XAPI call', async () => {
    for (const id of ['e9fa9add-0000-4000-8000-000000000000', pool.host('fwd-02'), pool.vm('alpha')]) {
      await assert.rejects(pool.xo.call('vgpu.scan', { pool: id }), e => {
        assert.equal(e.code, 1)
        assert.deepEqual(e.data, { id, type: 'pool' })
        return true
      })
    }
    assert.deepEqual(await pool.pluginCalls(), [])
  })

  test('parameters XO refuses and non-admins never reach XAPI', async () => {
    await assert.rejects(call('register', { vm: pool.vm('alpha'), priority: 'low' }), e => e.code === 10)
    await assert.rejects(call('list', { vgpuPool: '' }), e => e.code === 10)
    await assert.rejects(call('list', { vm_uuid: pool.vm('alpha') }), e => e.code === 10)
    await assert.rejects(call('list', {}, { user: USER }), e => e.code === 2)
    assert.deepEqual(await pool.pluginCalls(), [])
  })

  test('XAPI errors of the call itself: HOST_OFFLINE is XO\'s host offline; others keep their code', async () => {
    const masterRef = pool.hostRef('fwd-01')
    for (const method of ['host.call_plugin', 'Async.host.call_plugin']) {
      await pool.sim.call('sim.inject_fault', { method, code: 'HOST_OFFLINE', params: [masterRef] })
    }
    for (const m of ['list', 'scan']) {
      await assert.rejects(call(m), e => {
        assert.equal(e.code, 18)
        assert.deepEqual(e.data, { objectId: pool.host('fwd-01') })
        return true
      })
    }
    // A plugin that dies: xapi fails the task with XENAPI_PLUGIN_FAILURE.
    await pool.sim.call('sim.set_plugin_python', '/bin/false')
    const e = await vgpuError(call('status'), 'XENAPI_PLUGIN_FAILURE')
    assert.deepEqual(e.data.params, ['non-zero exit', '', ''])
  })
})

describe('REST routes', () => {
  const base = () => `/rest/v0/plugins/vgpu/pools/${pool.poolId}`

  test('each read function answers what its API method answers', async () => {
    await register('alpha', 'B', 'high', { vmId: 3 })
    const pairs = [
      ['scan', 'scan', {}],
      ['status', 'status', {}],
      ['list', 'list', { vgpuPool: 'B' }],
      ['list-pools', 'listPools', {}],
      ['show-pool', 'showPool', { vgpuPool: 'B' }],
      ['show', 'show', { vm: pool.vm('alpha') }],
    ]
    for (const [fn, method, query] of pairs) {
      const { status, body } = await pool.xo.rest('GET', `${base()}/${fn}?${new URLSearchParams(query)}`)
      assert.equal(status, 200, fn)
      assert.deepEqual(body, await call(method, query), fn)
    }
    assert.deepEqual(pairs.map(p => p[0]).sort(), FUNCTIONS.filter(f => f.read).map(f => f.name).sort())
  })

  test('errors: the plugin\'s with their code, unknown pool 404, non-admin 403', async () => {
    const notRegistered = await pool.xo.rest('GET', `${base()}/show?vm=${pool.vm('beta')}`)
    assert.equal(notRegistered.status, 404)
    assert.equal(notRegistered.body.data.code, 'VGPU_NOT_REGISTERED')
    assert.equal((await pool.xo.rest('GET', `${base()}/show-pool?vgpuPool=Q`)).status, 422)
    assert.equal((await pool.xo.rest('GET', '/rest/v0/plugins/vgpu/pools/nope/scan')).status, 404)
    assert.equal((await pool.xo.rest('GET', `${base()}/scan`, { user: USER })).status, 403)
  })
})
