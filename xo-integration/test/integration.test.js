'use strict'

// xo-server-vgpu through the connector xo-server itself uses: a real xen-api `Xapi` connected to
// the XAPI simulator (a pool of three hosts: a master and two members), whose host.call_plugin
// (sync, and Async with xapi's tasks and events) runs the real plugin/vgpu over this checkout's
// vgpu-admin. Every method, its success and each class of error callers can get; the master's
// replicas on the other hosts (SPEC §9); adoption and rebuild on the sample pool.

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
    // The member that forwarded holds a replica of the master's registry, never a registry of its own.
    const fwd03 = await call('refresh', { host: 'fwd-03' })
    assert.deepEqual([fwd03.host, fwd03.role, fwd03.vms], [pool.host('fwd-03'), 'replica', 2])
  })

  test('after a change of master, XO (through XAPI events) calls the new one', async () => {
    await pool.sim.call('sim.set_master', pool.host('fwd-02'))
    await pool.xapi.barrier()
    assert.equal(pool.xo.getObject(pool.poolId, 'pool').master, pool.host('fwd-02'))
    await call('listPools')
    assert.deepEqual((await pool.pluginCalls()).map(c => [c.host, c.fn]), [['fwd-02', 'list-pools']])
  })
})

describe('refresh: one host\'s replica, on the host given', () => {
  test('runs on the host named by uuid or name-label and answers that host\'s report', async () => {
    const alpha = await register('alpha', 'A', 'high', { vmId: 4 })
    const generation = Object.fromEntries(alpha.replicas.map(r => [r.name, r.generation]))
    await pool.sim.call('sim.clear_call_log')

    const fwd02 = await call('refresh', { host: pool.host('fwd-02') })
    assert.deepEqual(fwd02, {
      host: pool.host('fwd-02'),
      name: 'fwd-02',
      role: 'replica',
      generation: generation['fwd-02'],
      previous_generation: generation['fwd-02'],
      changed: false,
      vms: 1,
    })
    const fwd03 = await call('refresh', { host: 'fwd-03' })
    assert.deepEqual([fwd03.host, fwd03.name, fwd03.role, fwd03.vms], [pool.host('fwd-03'), 'fwd-03', 'replica', 1])
    const master = await call('refresh', { host: 'fwd-01' })
    assert.deepEqual([master.host, master.name, master.role], [pool.host('fwd-01'), 'fwd-01', 'primary'])

    // Each on its own host, as a task, with no arguments: nothing else was called.
    assert.deepEqual((await pool.pluginCalls()).map(c => [c.method, c.host, c.fn, c.args, c.from]), [
      ['Async.host.call_plugin', 'fwd-02', 'refresh', {}, 'xo'],
      ['Async.host.call_plugin', 'fwd-03', 'refresh', {}, 'xo'],
      ['Async.host.call_plugin', 'fwd-01', 'refresh', {}, 'xo'],
    ])
  })

  test('a replica the master could not reach is brought up to date', async () => {
    const member = pool.host('fwd-02')
    await pool.sim.call('sim.set_plugin_dir', member, pool.emptyPluginDir)
    const alpha = await register('alpha', 'B', 'low')
    const replicas = Object.fromEntries(alpha.replicas.map(r => [r.name, r]))
    assert.equal(replicas['fwd-02'].ok, false)
    assert.match(replicas['fwd-02'].error, /XENAPI_MISSING_PLUGIN/)
    assert.equal(replicas['fwd-03'].ok, true)
    assert.ok(!fs.existsSync(pool.dbs['fwd-02']))

    await pool.sim.call('sim.set_plugin_dir', member, null)
    const caughtUp = await call('refresh', { host: member })
    assert.equal(caughtUp.host, member)
    assert.equal(caughtUp.changed, true)
    assert.equal(caughtUp.generation, replicas['fwd-03'].generation)
    assert.notEqual(caughtUp.previous_generation, caughtUp.generation)
    assert.equal(caughtUp.vms, 1)
    assert.ok(fs.existsSync(pool.dbs['fwd-02']))
    const again = await call('refresh', { host: member })
    assert.deepEqual([again.changed, again.previous_generation, again.generation], [
      false, caughtUp.generation, caughtUp.generation,
    ])
  })

  test('a host that is not one of the pool\'s is refused, naming it, before any call', async () => {
    const hosts = ['fwd-01', 'fwd-02', 'fwd-03'].map(name => ({ uuid: pool.host(name), name_label: name }))
    for (const host of ['fwd-09', pool.vm('alpha'), '00000000-0000-4000-8000-000000000000', 'FWD-02']) {
      const e = await vgpuError(call('refresh', { host }), 'VGPU_INVALID_ARGUMENT')
      assert.equal(e.message, `host "${host}" is not a host of pool fwd-pool (${pool.poolId})`)
      assert.deepEqual(e.data.details, {
        argument: 'host', value: host, pool: pool.poolId, reason: 'not a host of this pool', hosts,
      })
    }
    await assert.rejects(call('refresh'), e => e.code === 10, 'host is required')
    await assert.rejects(call('refresh', { host: '' }), e => e.code === 10)
    await assert.rejects(call('adopt', { all: true, host: 'fwd-02' }), e => e.code === 10, 'only local functions')
    assert.deepEqual(await pool.pluginCalls(), [])
  })

  test('two hosts with the name given: refused, asking for the uuid', async () => {
    const twin = pool.xapi.getObjectByUuid(pool.host('fwd-03'))
    await pool.xapi.call('host.set_name_label', twin.$ref, 'fwd-02')
    await pool.xapi.barrier()
    const e = await vgpuError(call('refresh', { host: 'fwd-02' }), 'VGPU_INVALID_ARGUMENT')
    assert.match(e.message, /are named "fwd-02": give the host's UUID$/)
    assert.deepEqual(e.data.details.hosts.map(h => h.uuid).sort(), [pool.host('fwd-02'), pool.host('fwd-03')].sort())
    assert.equal((await call('refresh', { host: pool.host('fwd-03') })).host, pool.host('fwd-03'))
  })

  test('errors name the host given, not the master', async () => {
    const member = pool.host('fwd-03')
    await pool.sim.call('sim.set_plugin_dir', member, pool.emptyPluginDir)
    const e = await vgpuError(call('refresh', { host: 'fwd-03' }), 'XENAPI_MISSING_PLUGIN')
    assert.equal(e.message, `vgpu plugin not installed on fwd-03 (${member})`)
    assert.deepEqual(e.data.details, { host: member, host_name: 'fwd-03', function: 'refresh' })

    await pool.sim.call('sim.set_plugin_dir', member, pool.oldPluginDir)
    const old = await vgpuError(call('refresh', { host: member }), 'UNKNOWN_XENAPI_PLUGIN_FUNCTION')
    assert.match(old.message, new RegExp(`^vgpu plugin not installed on fwd-03 \\(${member}\\): .*"refresh"`))

    const offline = { method: 'Async.host.call_plugin', code: 'HOST_OFFLINE', params: [pool.hostRef('fwd-03')] }
    await pool.sim.call('sim.inject_fault', offline)
    await assert.rejects(call('refresh', { host: member }), e => {
      assert.equal(e.code, 18)
      assert.deepEqual(e.data, { objectId: member })
      return true
    })
  })
})

describe("the mediator's controls (SPEC §10): stored on the master, on every replica, reloaded", () => {
  const CONTROLS = ['weight', 'max_jobs_per_sec', 'max_queue_depth', 'quarantined', 'error_count']
  const controls = r => Object.fromEntries(CONTROLS.map(k => [k, r[k]]))
  const DEFAULTS = { weight: 50, max_jobs_per_sec: 0, max_queue_depth: 0, quarantined: false, error_count: 0 }

  test('setWeight, then showWeights, show and list see it; no host has a mediator, so none is asked', async () => {
    const alpha = await register('alpha', 'A', 'high')
    assert.deepEqual(controls(alpha), DEFAULTS)
    const set = await call('setWeight', { vmName: 'alpha', weight: 80 })
    assert.deepEqual([set.vm_uuid, set.weight, set.applied, set.in_effect], [pool.vm('alpha'), 80, true, true])
    assert.deepEqual(set.reloads, [])
    // a host without a mediator has no reload to report
    assert.deepEqual(set.replicas.map(r => [r.name, r.ok, 'reload' in r]).sort(), [
      ['fwd-02', true, false],
      ['fwd-03', true, false],
    ])

    await register('beta', 'B', 'low')
    const weights = await call('showWeights')
    assert.deepEqual(weights.map(r => [r.vm_name, r.weight]), [['alpha', 80], ['beta', 50]])
    assert.deepEqual((await call('showWeights', { vgpuPool: 'B' })).map(r => r.vm_name), ['beta'])
    assert.equal((await call('show', { vm: pool.vm('alpha') })).weight, 80)
    assert.deepEqual(controls((await call('list', { vgpuPool: 'A' }))[0]), { ...DEFAULTS, weight: 80 })

    // As a task on the master, with the plugin's arguments.
    const calls = (await pool.pluginCalls()).filter(c => c.from === 'xo' && c.fn === 'set-weight')
    assert.deepEqual(calls.map(c => [c.method, c.host, c.args]), [
      ['Async.host.call_plugin', 'fwd-01', { 'vm-name': 'alpha', weight: '80' }],
    ])
    // Every replica holds it: refreshing one finds nothing new.
    const replica = await call('refresh', { host: 'fwd-03' })
    assert.equal(replica.changed, false)
  })

  test('setRateLimit keeps the queue depth when not given; quarantine, list quarantined, clearQuarantine', async () => {
    await register('alpha', 'A', 'high')
    await register('beta', 'B', 'low')
    let r = await call('setRateLimit', { vm: pool.vm('beta'), rate: 25, queueDepth: '8' })
    assert.deepEqual([r.max_jobs_per_sec, r.max_queue_depth, r.in_effect], [25, 8, true])
    r = await call('setRateLimit', { vmName: 'beta', rate: '0' })
    assert.deepEqual([r.max_jobs_per_sec, r.max_queue_depth], [0, 8])
    const limits = await call('showRateLimits')
    assert.deepEqual(limits.map(v => [v.vm_name, v.max_jobs_per_sec, v.max_queue_depth]), [
      ['alpha', 0, 0],
      ['beta', 0, 8],
    ])
    assert.deepEqual((await call('showRateLimits', { vgpuPool: 'A' })).map(v => v.vm_name), ['alpha'])

    assert.deepEqual(await call('list', { quarantined: true }), [])
    const q = await call('quarantine', { vmName: 'beta' })
    assert.deepEqual([q.quarantined, q.in_effect, q.reloads], [true, true, []])
    assert.deepEqual((await call('list', { quarantined: true })).map(v => v.vm_name), ['beta'])
    assert.deepEqual((await call('list', { quarantined: false })).map(v => v.vm_name), ['alpha', 'beta'])
    const cleared = await call('clearQuarantine', { vm: pool.vm('beta') })
    assert.deepEqual([cleared.quarantined, cleared.error_count], [false, 0])
    assert.deepEqual(await call('list', { quarantined: true }), [])
  })

  test('bad values are refused with VGPU_INVALID_ARGUMENT in data.code, and nothing changes', async () => {
    await register('alpha', 'A', 'high')
    const e = await vgpuError(call('setWeight', { vmName: 'alpha', weight: 101 }), 'VGPU_INVALID_ARGUMENT')
    assert.match(e.message, /^invalid weight "101"/)
    assert.deepEqual([e.data.details.argument, e.data.details.value], ['weight', '101'])
    for (const [method, params, argument] of [
      ['setWeight', { vmName: 'alpha', weight: 0 }, 'weight'],
      ['setWeight', { vmName: 'alpha', weight: '50.5' }, 'weight'],
      // refused before the VM is looked up: not a VM_NOT_FOUND
      ['setWeight', { vmName: 'no such vm', weight: 101 }, 'weight'],
      ['setRateLimit', { vmName: 'alpha', rate: -1 }, 'rate'],
      ['setRateLimit', { vmName: 'alpha', rate: 'abc' }, 'rate'],
      ['setRateLimit', { vmName: 'alpha', rate: 5, queueDepth: -2 }, 'queue-depth'],
      ['mediator', { host: 'fwd-01', action: 'status' }, 'action'],
    ]) {
      const bad = await vgpuError(call(method, params), 'VGPU_INVALID_ARGUMENT')
      assert.equal(bad.data.details.argument, argument, `${method} ${JSON.stringify(params)}`)
    }
    assert.deepEqual(controls(await call('show', { vmName: 'alpha' })), DEFAULTS)
  })

  test('mediator on hosts without one: each answers absent, which is not an error', async () => {
    for (const name of ['fwd-01', 'fwd-02']) {
      const [answer, ...more] = await call('mediator', { host: name, action: 'health' })
      assert.deepEqual(more, [])
      assert.deepEqual([answer.host, answer.name, answer.ok, answer.absent, answer.status, answer.text], [
        pool.host(name), name, false, true, null, null,
      ])
      assert.match(answer.error, /^no mediator on this host \(no admin socket at /)
    }
    // allHosts: the host given asks the others through their plugins.
    const all = await call('mediator', { host: pool.host('fwd-03'), action: 'metrics', prometheus: true, allHosts: true })
    assert.deepEqual(all.map(a => [a.name, a.absent, a.ok]).sort(), [
      ['fwd-01', true, false],
      ['fwd-02', true, false],
      ['fwd-03', true, false],
    ])
    const calls = await pool.pluginCalls()
    assert.deepEqual(calls.filter(c => c.from === 'xo').map(c => [c.method, c.host, c.args]), [
      ['Async.host.call_plugin', 'fwd-01', { action: 'health' }],
      ['Async.host.call_plugin', 'fwd-02', { action: 'health' }],
      ['Async.host.call_plugin', 'fwd-03', { action: 'metrics', prometheus: 'true', 'all-hosts': 'true' }],
    ])
    assert.deepEqual(calls.filter(c => c.from === 'host').map(c => [c.host, c.fn]).sort(), [
      ['fwd-01', 'mediator'],
      ['fwd-02', 'mediator'],
    ])
    await assert.rejects(call('mediator', { action: 'health' }), e => e.code === 10, 'host is required')
  })

  test('mediators on the master and a member: a quarantine reaches each through its host\'s file', async () => {
    const master = await pool.startMediator('fwd-01')
    const med = await pool.startMediator('fwd-02')
    const alpha = await register('alpha', 'A', 'high', { vmId: 4 })
    assert.deepEqual(alpha.reloads.map(a => [a.name, a.ok, a.status]).sort(), [
      ['fwd-01', true, 0],
      ['fwd-02', true, 0],
    ])

    const q = await call('quarantine', { vmName: 'alpha' })
    assert.equal(q.in_effect, true)
    const reloaded = [...q.reloads].sort((a, b) => a.name.localeCompare(b.name))
    assert.deepEqual(reloaded.map(a => [a.host, a.name, a.ok, a.status, a.text, a.error]), [
      [pool.host('fwd-01'), 'fwd-01', true, 0, 'Config reloaded: 1 VM(s) updated\n', null],
      [pool.host('fwd-02'), 'fwd-02', true, 0, 'Config reloaded: 1 VM(s) updated\n', null],
    ])
    assert.deepEqual(master.loaded(), { 4: { ...DEFAULTS, quarantined: true } })
    assert.deepEqual(med.loaded(), { 4: { ...DEFAULTS, quarantined: true } })

    const w = await call('setWeight', { vm: pool.vm('alpha'), weight: 7 })
    assert.equal(w.in_effect, true)
    assert.equal(med.loaded()[4].weight, 7)

    // Asked directly, on that host.
    const [health] = await call('mediator', { host: 'fwd-02', action: 'health' })
    assert.deepEqual([health.name, health.ok, health.status], ['fwd-02', true, 0])
    assert.match(health.text, /=== Watchdog ===/)
    const [metrics] = await call('mediator', { host: 'fwd-02', action: 'metrics', prometheus: true })
    assert.ok(metrics.ok, metrics.error)
    assert.deepEqual(
      metrics.samples.filter(x => x.name === 'vgpu_vm_jobs_total'),
      [{ name: 'vgpu_vm_jobs_total', labels: { vm_id: '4' }, value: 40 }]
    )
    const [reload] = await call('mediator', { host: pool.host('fwd-02'), action: 'reload' })
    assert.deepEqual([reload.ok, reload.text], [true, 'Config reloaded: 1 VM(s) updated\n'])
  })

  test('a mediator that never answers: the change is stored and answered, with in_effect false', async () => {
    await register('alpha', 'A', 'high', { vmId: 4 })
    const med = await pool.startMediator('fwd-03', { mode: 'dead' })
    const r = await call('setRateLimit', { vmName: 'alpha', rate: 10 })
    assert.deepEqual([r.max_jobs_per_sec, r.in_effect], [10, false])
    const [failed] = r.reloads
    assert.deepEqual([r.reloads.length, failed.name, failed.ok, failed.status], [1, 'fwd-03', false, null])
    assert.ok(failed.error, 'why it failed')
    assert.equal((await call('show', { vmName: 'alpha' })).max_jobs_per_sec, 10, 'stored all the same')
    assert.equal(med.loaded(), null)

    // A weight needs no reload: in effect all the same.
    assert.equal((await call('setWeight', { vmName: 'alpha', weight: 60 })).in_effect, true)

    // Back to life: the retry loads it.
    const alive = await pool.startMediator('fwd-03')
    const [retry] = await call('mediator', { host: 'fwd-03', action: 'reload' })
    assert.equal(retry.ok, true, retry.error)
    assert.deepEqual(alive.loaded(), { 4: { ...DEFAULTS, weight: 60, max_jobs_per_sec: 10 } })
  })
})

describe('adopt and rebuild, on the sample pool (a legacy vgpu-stub VM)', () => {
  let lab
  before(async () => {
    lab = await Pool.start({ fixture: 'sample_pool.json' })
  })
  after(async () => {
    await lab?.stop()
  })
  beforeEach(async () => {
    await lab.reset()
  })
  const call = (method, params = {}) => lab.xo.call(`vgpu.${method}`, { pool: lab.poolId, ...params })
  const vmRecord = name => lab.sim.call('sim.get_vm', lab.vm(name))

  const LEGACY = '-device vgpu-stub,pool_id=B,priority=1,vm_id=3'
  // The standard form (SPEC §9): type from the configuration (vgpu-cuda by default), priority as a word.
  const ADOPTED = '-device vgpu-cuda,pool_id=B,priority=medium,vm_id=3'
  // Already in the standard form: adopted as it is.
  const CUDA_DEV = '-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1'

  test('dryRun shows the before and after of its device-model-args and changes nothing', async () => {
    const before = await vmRecord('legacy-stub')
    assert.equal(before.platform['device-model-args'], LEGACY)

    const dry = await call('adopt', { vm: lab.vm('legacy-stub'), dryRun: true })
    assert.deepEqual(dry, {
      dry_run: true,
      adopted: [
        {
          vm_uuid: lab.vm('legacy-stub'),
          vm_name: 'legacy-stub',
          pool: 'B',
          priority: 'medium',
          vm_id: 3,
          before: LEGACY,
          after: ADOPTED,
          pending_restart: false,
        },
      ],
      skipped: [],
    })
    assert.deepEqual(await vmRecord('legacy-stub'), before)
    assert.deepEqual(await call('list'), [])
    assert.ok(!fs.existsSync(lab.dbs['xcp-lab-02']), 'no replica refreshed')
    assert.deepEqual((await lab.pluginCalls()).map(c => [c.method, c.host, c.fn, c.args]), [
      ['Async.host.call_plugin', 'xcp-lab-01', 'adopt', { 'vm-uuid': lab.vm('legacy-stub'), 'dry-run': 'true' }],
      ['host.call_plugin', 'xcp-lab-01', 'list', {}],
    ])
  })

  test('then for real: registered with its values, device in the standard form, mirror and replica', async () => {
    const done = await call('adopt', { vmName: 'legacy-stub' })
    assert.equal(done.dry_run, false)
    assert.deepEqual(done.adopted.map(a => [a.vm_uuid, a.pool, a.priority, a.vm_id, a.before, a.after]), [
      [lab.vm('legacy-stub'), 'B', 'medium', 3, LEGACY, ADOPTED],
    ])
    assert.deepEqual(done.skipped, [])
    assert.deepEqual(done.replicas.map(r => [r.host, r.name, r.ok]), [[lab.host('xcp-lab-02'), 'xcp-lab-02', true]])

    const vm = await vmRecord('legacy-stub')
    assert.equal(vm.platform['device-model-args'], ADOPTED)
    assert.equal(vm.other_config['XenCenter.CustomFields.vgpu'], 'pool B, medium, vm_id 3')
    assert.deepEqual(
      (({ pool: p, priority, vm_id }) => ({ pool: p, priority, vm_id }))(JSON.parse(vm.other_config['vgpu-registry'])),
      { pool: 'B', priority: 'medium', vm_id: 3 }
    )
    assert.deepEqual((await call('list')).map(r => [r.vm_name, r.pool, r.priority, r.vm_id]), [
      ['legacy-stub', 'B', 'medium', 3],
    ])

    // The member's replica holds it: its refresh finds nothing new.
    const replica = await call('refresh', { host: 'xcp-lab-02' })
    assert.deepEqual([replica.host, replica.changed, replica.vms, replica.generation], [
      lab.host('xcp-lab-02'), false, 1, done.replicas[0].generation,
    ])

    // Registered now: a second adoption skips it.
    const again = await call('adopt', { vm: lab.vm('legacy-stub') })
    assert.deepEqual(again.adopted, [])
    assert.deepEqual(again.skipped.map(s => [s.vm_uuid, s.reason]), [[lab.vm('legacy-stub'), 'already registered']])
  })

  test('all: every VM with a device; one whose vm_id is taken is skipped with the reason and left alone', async () => {
    await call('register', { vmName: 'render-01', vgpuPool: 'A', priority: 'low', vmId: 1 })
    const all = await call('adopt', { all: true })
    assert.deepEqual(all.adopted.map(a => a.vm_name), ['legacy-stub'])
    assert.deepEqual(all.skipped.map(s => [s.vm_name, s.device_model_args]), [['cuda-dev', CUDA_DEV]])
    assert.match(all.skipped[0].reason, new RegExp(`vm_id 1 .*${lab.vm('render-01')}`))
    assert.equal((await vmRecord('cuda-dev')).platform['device-model-args'], CUDA_DEV)
    assert.deepEqual((await call('list')).map(r => r.vm_name).sort(), ['legacy-stub', 'render-01'])
  })

  test('rebuild: dryRun changes nothing; after the master\'s file is lost, everything comes back', async () => {
    await call('adopt', { vmName: 'legacy-stub' })
    const master = lab.dbs['xcp-lab-01']
    const dry = await call('rebuild', { dryRun: true })
    assert.deepEqual([dry.dry_run, dry.backup, dry.restored], [true, null, 1])
    assert.deepEqual(dry.adopt.adopted.map(a => [a.vm_name, a.before, a.after]), [
      ['cuda-dev', CUDA_DEV, CUDA_DEV],
    ])
    assert.deepEqual(fs.readdirSync(path.dirname(master)).filter(f => f.includes('pre-rebuild')), [])
    assert.deepEqual((await call('list')).map(r => r.vm_name), ['legacy-stub'])

    fs.rmSync(master)
    const done = await call('rebuild')
    assert.deepEqual([done.dry_run, done.backup, done.restored], [false, null, 1])
    assert.deepEqual(done.adopt.adopted.map(a => a.vm_name), ['cuda-dev'])
    assert.deepEqual((await call('list')).map(r => [r.vm_name, r.pool, r.priority, r.vm_id]), [
      ['cuda-dev', 'A', 'high', 1],
      ['legacy-stub', 'B', 'medium', 3],
    ])

    // Over an existing file: a copy of it is kept beside it first.
    const over = await call('rebuild')
    assert.equal(path.dirname(over.backup), path.dirname(master))
    assert.ok(path.basename(over.backup).startsWith(`${path.basename(master)}.pre-rebuild-`), over.backup)
    assert.ok(fs.existsSync(over.backup))
    assert.equal(over.restored, 2)
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
      ['show-weights', 'showWeights', {}],
      ['show-rate-limits', 'showRateLimits', { vgpuPool: 'B' }],
      ['mediator', 'mediator', { host: 'fwd-02', action: 'connections' }],
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
