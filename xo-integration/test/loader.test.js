'use strict'

// The package as xo-server meets it: the `npm pack` tarball unpacked into a plugin lookup
// directory (no node_modules beside it), found by its `xo-server-<name>` entry, imported as
// xo-server imports plugins, its factory picked the way xo-server picks it (the CommonJS export,
// or a Babel-style `default`), then configured, loaded and unloaded as xo-server does.

const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { after, before, test } = require('node:test')

const { FUNCTIONS, methodName } = require('../src/functions.js')
const { FakeXo } = require('../testing/fake-xo.js')
const { PACKAGE_DIR } = require('../testing/harness.js')

const PREFIX = 'xo-server-'
let tmp, lookup, packed

function run(cmd, args, opts = {}) {
  const out = spawnSync(cmd, args, { encoding: 'utf8', ...opts })
  assert.equal(out.status, 0, `${cmd} ${args.join(' ')}: ${out.stderr}`)
  return out.stdout
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'xo-vgpu-loader-'))
  ;[packed] = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: PACKAGE_DIR }))
  lookup = path.join(tmp, 'node_modules')
  fs.mkdirSync(lookup)
  run('tar', ['-xzf', path.join(tmp, packed.filename), '-C', tmp])
  fs.renameSync(path.join(tmp, 'package'), path.join(lookup, 'xo-server-vgpu'))
  // Entries xo-server must pass over.
  fs.mkdirSync(path.join(lookup, 'vgpu-tools'))
  fs.mkdirSync(path.join(lookup, '@xen-orchestra'))
})

after(() => fs.rmSync(tmp, { recursive: true, force: true }))

// xo-server's findPluginsInPath: directory entries starting with the prefix, named by the rest.
function findPlugins(dir, prefix) {
  const found = new Map()
  for (const entry of fs.readdirSync(dir)) {
    if (entry.startsWith(prefix)) {
      found.set(entry.slice(prefix.length), `${dir}/${entry}`)
    }
  }
  return found
}

// xo-server's registerPlugin: import the resolved path, take `default` when there is one (Babel's
// ES2015 modules) or the export itself (CommonJS), call what is a function with the plugin context.
async function instantiate(pluginPath, pluginName, xo) {
  const plugin = (await import(require.resolve(pluginPath))).default
  const pkg = JSON.parse(fs.readFileSync(`${pluginPath}/package.json`, 'utf8'))
  const { default: factory = plugin, configurationSchema, configurationPresets, testSchema } = plugin
  const contexts = []
  const handleFactory = f => {
    if (typeof f !== 'function') return f
    const context = { staticConfig: {}, xo, getDataDir: async () => path.join(tmp, 'data', pluginName) }
    contexts.push(context)
    return f(context)
  }
  const [instance, schema, presets, test] = await Promise.all([
    handleFactory(factory),
    handleFactory(configurationSchema),
    handleFactory(configurationPresets),
    handleFactory(testSchema),
  ])
  return { plugin, pkg, factory, instance, schema, presets, test, contexts }
}

test('the tarball holds the plugin and nothing of its tests', () => {
  const files = packed.files.map(f => f.path).sort()
  assert.deepEqual(files, [
    'README.md',
    'index.js',
    'package.json',
    'src/api.js',
    'src/call.js',
    'src/functions.js',
    'src/rest.js',
  ])
  const pkg = JSON.parse(fs.readFileSync(path.join(lookup, 'xo-server-vgpu', 'package.json'), 'utf8'))
  assert.equal(pkg.name, 'xo-server-vgpu')
  assert.equal(pkg.main, 'index.js')
  assert.equal(pkg.engines.node, '>=20')
  assert.equal(pkg.dependencies, undefined, 'no runtime dependencies')
  assert.equal(pkg.type, undefined, 'CommonJS')
})

test('it needs nothing but Node: every require is relative or a node: builtin', () => {
  const root = path.join(lookup, 'xo-server-vgpu')
  for (const file of packed.files.map(f => f.path).filter(f => f.endsWith('.js'))) {
    const text = fs.readFileSync(path.join(root, file), 'utf8')
    for (const [, spec] of text.matchAll(/require\(['"]([^'"]+)['"]\)/g)) {
      assert.ok(spec.startsWith('./') || spec.startsWith('../') || spec.startsWith('node:'), `${file}: ${spec}`)
    }
  }
})

test('xo-server finds it as "vgpu" and nothing else in the lookup path', () => {
  const found = findPlugins(lookup, PREFIX)
  assert.deepEqual([...found.keys()], ['vgpu'])
  assert.deepEqual(findPlugins(path.join(lookup, '@xen-orchestra'), 'server-'), new Map())
})

test('xo-server picks the factory, instantiates, configures and loads it', async () => {
  const [[name, pluginPath]] = findPlugins(lookup, PREFIX)
  const xo = new FakeXo()
  const loaded = await instantiate(pluginPath, name, xo)
  const { plugin, pkg, factory, instance, schema, presets, test: testSchema, contexts } = loaded

  // Both ways xo-server may take the factory lead to the same function.
  assert.equal(typeof plugin, 'function', 'the CommonJS export is the factory')
  assert.equal(plugin.default, plugin, 'and so is its Babel-style default')
  assert.equal(factory, plugin)
  assert.equal(contexts.length, 1, 'only the factory is called')
  assert.equal(contexts[0].xo, xo)

  // No configuration schema: xo-server treats the plugin as configured and autoloads it.
  assert.equal(schema, undefined)
  assert.equal(presets, undefined)
  assert.equal(testSchema, undefined)
  assert.equal(typeof instance.load, 'function')
  assert.equal(typeof instance.unload, 'function', 'unloadable')
  assert.equal(typeof instance.test, 'undefined', 'not testable')
  assert.equal(typeof instance.configure, 'undefined')
  assert.ok(pkg.description.length > 0 && pkg.keywords.includes('xo-server'))

  await instance.load()
  assert.deepEqual(Object.keys(xo.apiMethods).sort(), FUNCTIONS.map(f => `vgpu.${methodName(f.name)}`).sort())
  assert.ok(xo.restEndpoints.length > 0)
  await instance.unload()
  assert.deepEqual(Object.keys(xo.apiMethods), [])
  assert.deepEqual(xo.restEndpoints, [])
})

test('a Babel-compiled consumer (exports.default only) gets the same factory', async () => {
  const pluginPath = path.join(lookup, 'xo-server-vgpu')
  const required = require(pluginPath)
  const interop = required && required.__esModule ? required.default : (required.default ?? required)
  assert.equal(interop, required)
  const xo = new FakeXo({ rest: false })
  const instance = interop({ xo, staticConfig: {}, getDataDir: async () => tmp })
  instance.load()
  assert.equal(Object.keys(xo.apiMethods).length, FUNCTIONS.length)
})
