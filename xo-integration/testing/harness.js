'use strict'

// The integration harness: the repository's XAPI simulator as a child process, the real `vgpu`
// plugin file run by it the way xapi runs plugins (CLI backend, this checkout's vgpu-admin), a
// real xen-api `Xapi` connected to it (the connector xo-server uses), xo-server-vgpu loaded
// into the fake xo-server app, and on request a stand-in for a host's GPU mediator.

const assert = require('node:assert')
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const createPlugin = require('../index.js')
const { FakeXo } = require('./fake-xo.js')

const PACKAGE_DIR = path.resolve(__dirname, '..')
const REPO_DIR = path.resolve(PACKAGE_DIR, '..')
const TESTS_DIR = path.join(REPO_DIR, 'tests')
const FIXTURES_DIR = path.join(TESTS_DIR, 'xapi_sim', 'fixtures')

// The interpreter for the simulator and the plugin: $PYTHON, else the repository's test venv,
// else python3 (the simulator and the plugin's CLI path need only the standard library).
function python() {
  if (process.env.PYTHON) {
    return process.env.PYTHON
  }
  const venv = path.join(REPO_DIR, '.venv', 'bin', 'python')
  return fs.existsSync(venv) ? venv : 'python3'
}

// The vgpu-admin binary the plugin runs: $VGPU_ADMIN_BIN (what `make test-xo` sets), else the
// debug build of this checkout. Missing is a failure, never a skip.
function vgpuAdmin() {
  const bin = process.env.VGPU_ADMIN_BIN || path.join(REPO_DIR, 'target', 'debug', 'vgpu-admin')
  assert.ok(fs.existsSync(bin), `${bin} is missing: build it with \`cargo build -p vgpu-admin\` (or \`make build\`)`)
  return bin
}

// `vgpu-admin functions --format json`: the core's function table.
function functionTable() {
  const out = spawnSync(vgpuAdmin(), ['functions', '--format', 'json'], { encoding: 'utf8' })
  assert.strictEqual(out.status, 0, out.stderr)
  return JSON.parse(out.stdout)
}

function readFixture(name) {
  const fixture = JSON.parse(fs.readFileSync(path.join(FIXTURES_DIR, name), 'utf8'))
  const byName = list => Object.fromEntries(list.map(o => [o.name_label, o.uuid]))
  return { ...fixture, hostUuids: byName(fixture.hosts), vmUuids: byName(fixture.vms) }
}

class Simulator {
  static start({ fixture, log }) {
    const sim = new Simulator()
    const args = ['-m', 'xapi_sim', 'serve', '--fixture', path.join(FIXTURES_DIR, fixture), '--port', '0']
    args.push('--plugin-python', python())
    if (log) {
      args.push('--log', log)
    }
    const env = { ...process.env, PYTHONPATH: TESTS_DIR, PYTHONUNBUFFERED: '1' }
    sim.proc = spawn(python(), args, { cwd: REPO_DIR, env, stdio: ['ignore', 'pipe', 'pipe'] })
    sim.stderr = ''
    sim.proc.stderr.setEncoding('utf8').on('data', chunk => {
      sim.stderr += chunk
    })
    return new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => fail(new Error('the simulator did not start within 30 s')), 30e3)
      const fail = error => {
        clearTimeout(timer)
        sim.proc.kill('SIGKILL')
        error.message += `\nsimulator stderr:\n${sim.stderr}`
        reject(error)
      }
      sim.proc.on('exit', code => fail(new Error(`the simulator exited with ${code}`)))
      sim.proc.stdout.setEncoding('utf8').on('data', chunk => {
        out += chunk
        const m = /^LISTENING (\S+)$/m.exec(out)
        if (m) {
          clearTimeout(timer)
          sim.proc.removeAllListeners('exit')
          sim.url = m[1]
          resolve(sim)
        }
      })
    })
  }

  // A control (`sim.*`) or XAPI call over JSON-RPC; rejects with { code, params } on an XAPI error.
  async call(method, ...params) {
    const response = await fetch(new URL('/jsonrpc', this.url), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ jsonrpc: '2.0', method, params, id: 1 }),
    })
    const answer = await response.json()
    if (answer.error) {
      throw Object.assign(new Error(`${answer.error.message} ${JSON.stringify(answer.error.data)}`), {
        code: answer.error.message,
        params: answer.error.data,
      })
    }
    return answer.result
  }

  // The call log, optionally only one method's calls.
  async callLog(method) {
    const log = await this.call('sim.call_log')
    return method === undefined ? log : log.filter(entry => entry.method === method)
  }

  async stop() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
      return
    }
    const exited = new Promise(resolve => this.proc.once('exit', resolve))
    this.proc.kill('SIGTERM')
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10e3)
    await exited
    clearTimeout(timer)
  }
}

// The repository's stand-in for a host's GPU mediator (tests/mediator_sim): its admin socket, and
// on RELOAD_CONFIG it reads the host's registry file as the mediator does and records what it
// loaded (one JSON line per event in `record`).
class Mediator {
  static start({ socket, db, record, mode = 'normal' }) {
    const med = new Mediator()
    med.socket = socket
    med.record = record
    const args = ['-m', 'mediator_sim', 'serve', '--socket', socket, '--db', db, '--record', record, '--mode', mode]
    const env = { ...process.env, PYTHONPATH: TESTS_DIR, PYTHONUNBUFFERED: '1' }
    med.proc = spawn(python(), args, { cwd: REPO_DIR, env, stdio: ['ignore', 'pipe', 'pipe'] })
    med.stderr = ''
    med.proc.stderr.setEncoding('utf8').on('data', chunk => {
      med.stderr += chunk
    })
    return new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => fail(new Error('the mediator stand-in did not start within 30 s')), 30e3)
      const fail = error => {
        clearTimeout(timer)
        med.proc.kill('SIGKILL')
        error.message += `\nmediator stand-in stderr:\n${med.stderr}`
        reject(error)
      }
      med.proc.on('exit', code => fail(new Error(`the mediator stand-in exited with ${code}`)))
      med.proc.stdout.setEncoding('utf8').on('data', chunk => {
        out += chunk
        if (/^LISTENING /m.test(out)) {
          clearTimeout(timer)
          med.proc.removeAllListeners('exit')
          resolve(med)
        }
      })
    })
  }

  // Its events so far (start, request, reload), oldest first.
  events() {
    if (!fs.existsSync(this.record)) {
      return []
    }
    return fs
      .readFileSync(this.record, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map(line => JSON.parse(line))
  }

  // What its last successful reload loaded: { vm_id: { weight, max_jobs_per_sec, … } }.
  loaded() {
    const reloads = this.events().filter(e => e.event === 'reload' && e.ok)
    return reloads.length === 0 ? null : reloads[reloads.length - 1].vms
  }

  async stop() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
      return
    }
    const exited = new Promise(resolve => this.proc.once('exit', resolve))
    this.proc.kill('SIGTERM')
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10e3)
    await exited
    clearTimeout(timer)
  }
}

// An older vgpu plugin: dispatches through XenAPIPlugin but knows only `scan`, so every other
// function is UNKNOWN_XENAPI_PLUGIN_FUNCTION, answered by XenAPIPlugin itself.
const OLD_PLUGIN = `import json
import XenAPIPlugin

def scan(session, args):
    return json.dumps({"registered": [], "unregistered": [], "stale": [], "summary": {}})

if __name__ == "__main__":
    XenAPIPlugin.dispatch({"scan": scan})
`

// A pool of the simulator with xo-server-vgpu loaded into a fake xo-server connected to it.
class Pool {
  static async start({ fixture = 'three_host_pool.json', rest = true } = {}) {
    const { Xapi } = await import('xen-api')
    const pool = new Pool()
    pool.fixture = readFixture(fixture)
    pool.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'xo-vgpu-'))
    pool.sim = await Simulator.start({ fixture, log: path.join(pool.tmp, 'xapi-sim.log') })
    pool.xapi = new Xapi({
      url: pool.sim.url,
      auth: { user: 'root', password: pool.fixture.users.root },
      allowUnauthorized: true,
    })
    await pool.xapi.connect()
    await pool.xapi.objectsFetched
    pool.xo = new FakeXo({ rest })
    pool.xo.addXapi(pool.xapi)
    pool.plugin = createPlugin({ xo: pool.xo, staticConfig: {}, getDataDir: async () => pool.tmp })
    await pool.plugin.load()
    pool.emptyPluginDir = fs.mkdtempSync(path.join(pool.tmp, 'no-plugins-'))
    pool.oldPluginDir = fs.mkdtempSync(path.join(pool.tmp, 'old-plugin-'))
    fs.writeFileSync(path.join(pool.oldPluginDir, 'vgpu'), OLD_PLUGIN, { mode: 0o755 })
    pool.runs = 0
    pool.mediators = {}
    await pool.reset()
    return pool
  }

  get poolId() {
    return this.fixture.pool.uuid
  }

  host(name) {
    return this.fixture.hostUuids[name]
  }

  vm(name) {
    return this.fixture.vmUuids[name]
  }

  hostRef(name) {
    return this.xapi.getObjectByUuid(this.host(name)).$ref
  }

  // The fixture's state again, empty registries (one database per host), no faults, an empty
  // call log; XO's view of the pool brought up to date.
  async reset() {
    await this.stopMediators()
    await this.sim.call('sim.reset')
    const run = path.join(this.tmp, `run-${++this.runs}`)
    fs.mkdirSync(run)
    this.run = run
    this.dbs = {}
    for (const host of this.fixture.hosts) {
      this.dbs[host.name_label] = path.join(run, `${host.name_label}.db`)
      await this.sim.call('sim.set_plugin_env', host.uuid, {
        PYTHONPATH: path.join(TESTS_DIR, 'plugin'), // the XenAPIPlugin stand-in
        VGPU_PLUGIN_BACKEND: 'cli',
        VGPU_ADMIN: vgpuAdmin(),
        VGPU_CONFIG: path.join(run, 'absent.conf'),
        VGPU_DB: this.dbs[host.name_label],
      })
    }
    this.xo.clearOverrides()
    await this.xapi.barrier()
    await this.sim.call('sim.clear_call_log')
  }

  // A mediator stand-in on host `name`, reading that host's registry file: the host's plugin is
  // given a config file naming its admin socket (the other hosts keep none: no mediator there).
  async startMediator(name, { mode = 'normal', timeoutS = 1 } = {}) {
    await this.mediators[name]?.stop()
    const socket = path.join(this.run, `${name}.sock`)
    const config = path.join(this.run, `${name}.conf`)
    fs.writeFileSync(config, `[mediator]\nadmin_socket = ${JSON.stringify(socket)}\ntimeout_s = ${timeoutS}\n`)
    await this.sim.call('sim.set_plugin_env', this.host(name), { VGPU_CONFIG: config })
    const record = path.join(this.run, `${name}-mediator.jsonl`)
    this.mediators[name] = await Mediator.start({ socket, db: this.dbs[name], record, mode })
    return this.mediators[name]
  }

  async stopMediators() {
    for (const name of Object.keys(this.mediators ?? {})) {
      await this.mediators[name].stop()
      delete this.mediators[name]
    }
  }

  // The plugin calls the simulator saw (sync and Async), as { method, host (its name), plugin,
  // fn, args, from }: `from` is 'xo' for XO's own calls (its session), 'host' for the calls a
  // plugin made (forwarding to the master, the master asking the others to refresh).
  async pluginCalls() {
    const names = Object.fromEntries(this.fixture.hosts.map(h => [this.hostRef(h.name_label), h.name_label]))
    const log = await this.sim.callLog()
    return log
      .filter(e => e.method === 'host.call_plugin' || e.method === 'Async.host.call_plugin')
      .map(({ method, params: [session, host, plugin, fn, args] }) => ({
        method,
        host: names[host],
        plugin,
        fn,
        args,
        from: session === this.xapi.sessionId ? 'xo' : 'host',
      }))
  }

  async stop() {
    try {
      await this.stopMediators()
      await this.plugin?.unload()
      await this.xapi?.disconnect()
    } finally {
      await this.sim?.stop()
      if (!process.env.XO_VGPU_KEEP) {
        fs.rmSync(this.tmp, { recursive: true, force: true })
      }
    }
  }
}

module.exports = { PACKAGE_DIR, REPO_DIR, Mediator, Pool, Simulator, functionTable, python, readFixture, vgpuAdmin }
