'use strict'

// The fake xo-server is only worth what it refuses: these tests hold it to xo-server's rules, so
// that a plugin that passes it would pass xo-server too.

const assert = require('node:assert/strict')
const { test } = require('node:test')

const { ADMIN, USER, FakeXo, xoToJsonSchema } = require('../testing/fake-xo.js')
const { POOL, StubXapi } = require('../testing/stub-xapi.js')

const method = (fn, props) => Object.assign(fn, props)

test('only description, params, permission and resolve may sit on a method', () => {
  const xo = new FakeXo()
  assert.throws(
    () => xo.addApiMethods({ ns: { bad: method(() => 1, { params: {}, timeout: 5 }) } }),
    /invalid prop timeout for API method ns\.bad/
  )
  assert.deepEqual(Object.keys(xo.apiMethods), [])
  const good = method(() => 1, { description: 'd', params: {}, permission: 'admin', resolve: {} })
  xo.addApiMethods({ ns: { good } })
  assert.deepEqual(Object.keys(xo.apiMethods), ['ns.good'])
})

test('a name that exists is refused, and a refused call adds nothing', () => {
  const xo = new FakeXo()
  xo.addApiMethods({ ns: { a: () => 1 } })
  assert.throws(() => xo.addApiMethods({ ns: { b: () => 2, a: () => 3 } }), /API method ns\.a already exists/)
  assert.deepEqual(Object.keys(xo.apiMethods), ['ns.a'])
})

test('the remover removes what it added, once', () => {
  const xo = new FakeXo()
  const remove = xo.addApiMethods({ ns: { a: () => 1, deep: { b: () => 2 } } })
  assert.deepEqual(Object.keys(xo.apiMethods).sort(), ['ns.a', 'ns.deep.b'])
  remove()
  assert.deepEqual(Object.keys(xo.apiMethods), [])
  xo.addApiMethods({ ns: { a: () => 'again' } })
  remove() // a second call must not remove the new ns.a
  assert.deepEqual(Object.keys(xo.apiMethods), ['ns.a'])
})

test("XO's params dialect: required unless optional, no extra keys, non-empty strings", async () => {
  const xo = new FakeXo()
  xo.addApiMethods({
    ns: {
      m: method(params => params, {
        params: {
          s: { type: 'string' },
          n: { type: ['string', 'integer'], optional: true },
          b: { type: 'boolean', optional: true },
        },
      }),
    },
  })
  assert.deepEqual(await xo.call('ns.m', { s: 'x', n: 3, b: true }), { s: 'x', n: 3, b: true })
  for (const bad of [{}, { s: '' }, { s: 'x', extra: 1 }, { s: 'x', b: 'true' }, { s: 1 }]) {
    const invalid = e => e.code === 10 && e.message === 'invalid parameters'
    await assert.rejects(xo.call('ns.m', bad), invalid, JSON.stringify(bad))
  }
  // `?` marks a parameter the caller lets the server ignore
  assert.deepEqual(await xo.call('ns.m', { s: 'x', 'other?': 1 }), { s: 'x' })
})

test('the dialect transformation itself', () => {
  const schema = xoToJsonSchema({
    type: 'object',
    properties: { a: { type: 'string' }, b: { type: 'string', optional: true, pattern: '^x' }, c: { enum: ['p'] } },
  })
  assert.deepEqual(schema, {
    type: 'object',
    properties: { a: { type: 'string', minLength: 1 }, b: { type: 'string', pattern: '^x' }, c: { enum: ['p'] } },
    additionalProperties: false,
    required: ['a', 'c'],
  })
})

test('a schema keyword Ajv does not know is refused when the method is added (strict mode)', () => {
  const xo = new FakeXo()
  const m = method(() => 1, { params: { a: { type: 'string', example: 'x' } } })
  assert.throws(() => xo.addApiMethods({ ns: { m } }), /unknown keyword/)
})

test('methods run with the app as `this`; undefined becomes true', async () => {
  const xo = new FakeXo()
  let seen
  xo.addApiMethods({
    ns: {
      m: method(function () {
        seen = this
      }, { params: {} }),
    },
  })
  assert.equal(await xo.call('ns.m', {}), true)
  assert.equal(seen, xo)
})

test('permissions: admin methods refuse other users; unknown methods are JSON-RPC errors', async () => {
  const xo = new FakeXo()
  xo.addApiMethods({ ns: { m: method(() => 'ok', { permission: 'admin' }) } })
  assert.equal(await xo.call('ns.m', {}, { user: ADMIN }), 'ok')
  await assert.rejects(xo.call('ns.m', {}, { user: USER }), e => e.code === 2 && e.data.permission === 'admin')
  await assert.rejects(xo.call('ns.m', {}, { user: null }), e => e.code === 2)
  await assert.rejects(xo.call('ns.nope', {}), e => e.code === -32601)
})

test('an unknown error reaches an admin as -32000 with its properties in data; others see nothing', async () => {
  const xo = new FakeXo()
  const fail = () => {
    throw Object.assign(new Error('it broke'), { code: 'SOME_CODE', details: { k: 1 } })
  }
  xo.addApiMethods({ ns: { m: method(fail, { permission: 'write' }) } })
  await assert.rejects(xo.call('ns.m', {}), e => {
    assert.equal(e.code, -32000)
    assert.equal(e.message, 'it broke')
    assert.equal(e.data.code, 'SOME_CODE')
    assert.deepEqual(e.data.details, { k: 1 })
    return true
  })
  await assert.rejects(xo.call('ns.m', {}, { user: { ...USER, permission: 'write' } }), e => {
    assert.equal(e.message, 'unknown error from the peer')
    assert.equal(e.data, undefined)
    return true
  })
})

test('objects: no such object, wrong type, and the XAPI connection of a pool', () => {
  const xo = new FakeXo()
  const xapi = new StubXapi()
  xo.addXapi(xapi)
  assert.equal(xo.getObject(POOL.uuid, 'pool').type, 'pool')
  assert.equal(xo.getXapi(xo.getObject(POOL.uuid)), xapi)
  assert.throws(() => xo.getObject('nope', 'pool'), e => e.code === 1 && e.message === 'no such pool nope')
  const host = xo.getObject(xapi.pool.$master.$id)
  assert.equal(host.type, 'host')
  assert.throws(() => xo.getObject(host.id, 'pool'), e => e.code === 1)
})

test('REST routes: the route type is checked, admin only without an ACL, params and query validated', async () => {
  const xo = new FakeXo()
  const ok = {
    method: 'get',
    endpoint: 'x/{id}',
    params: { id: { type: 'string' } },
    query: { q: { type: 'string', optional: true } },
    callback: ({ req }) => ({ ...req.params, ...req.query }),
  }
  assert.throws(() => xo.registerRestRoutes([{ ...ok, verb: 'get' }]), /unknown route property verb/)
  assert.throws(() => xo.registerRestRoutes([{ ...ok, method: 'GET' }]), /invalid route method/)
  assert.throws(() => xo.registerRestRoutes([{ ...ok, params: { id: { type: 'boolean' } } }]), /Unsupported type/)
  assert.throws(() => xo.registerRestRoutes([{ ...ok, params: { other: { type: 'string' } } }]), /not in the endpoint/)
  const remove = xo.registerRestRoutes([ok])
  assert.throws(() => xo.registerRestRoutes([ok]), /already registered/)
  assert.deepEqual(xo.restEndpoints, ['GET /rest/v0/x/{id}'])
  assert.deepEqual(await xo.rest('GET', '/rest/v0/x/7?q=a'), { status: 200, body: { id: '7', q: 'a' } })
  assert.equal((await xo.rest('GET', '/rest/v0/x/7', { user: USER })).status, 403)
  assert.equal((await xo.rest('GET', '/rest/v0/x/7', { user: null })).status, 401)
  assert.equal((await xo.rest('GET', '/rest/v0/x/7?q=a&q=b')).status, 422)
  remove()
  assert.equal((await xo.rest('GET', '/rest/v0/x/7')).status, 404)
})

test('an xo-server without plugin REST routes has no registerRestRoutes', () => {
  assert.equal(typeof new FakeXo({ rest: false }).registerRestRoutes, 'undefined')
  assert.equal(typeof new FakeXo().registerRestRoutes, 'function')
})
