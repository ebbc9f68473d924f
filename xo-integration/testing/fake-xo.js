'use strict'

// A stand-in for xo-server's app object (the `xo` a plugin's factory gets), strict where
// xo-server is strict. The rules, as xo-server applies them (its index.mjs, xo-mixins/api.mjs,
// xo-mixins/_xoJsonSchema.mjs, xo-mixins/rest-api.mjs and the REST API's external router):
//
// - API methods: `addApiMethods` takes a tree of namespaces; a method is a function whose own
//   enumerable properties are only `description`, `params`, `permission`, `resolve`; a name that
//   exists is refused; `params` is compiled from XO's dialect into a JSON schema by Ajv (strict
//   mode: an unknown keyword is an error); the call returns a remover that removes every method it
//   added, once. A failing call adds nothing.
// - Calls: unknown method -> JSON-RPC "method not found"; permission checked against the user's;
//   params validated (XO's `invalidParameters`, code 10); the method runs with the app as `this`;
//   `undefined` becomes `true`. A non-XO error reaches an admin as JSON-RPC error -32000 with the
//   message and the error's properties in `data`; a non-admin gets "unknown error from the peer".
// - Objects: `getObject(id, type)` throws XO's `noSuchObject` (code 1) for an unknown id or an
//   object of another type; `getXapi(object)` is the XAPI connection of the object's pool.
// - REST (when enabled): `registerRestRoutes(routes, base)` mounts routes under /rest/v0; a route
//   without an ACL middleware is for admins only; params and query are validated as declared
//   (required unless `optional`); the callback may answer itself through `res`; an undefined
//   result is 204; errors are mapped by XO's generic error handler.
//
// Only the parts a plugin touches are here; everything is checked at the point xo-server checks it.

const path = require('node:path')
const Ajv = require('ajv')
const xoErrors = require('xo-common/api-errors.js')
const { JsonRpcError, MethodNotFound, format } = require('json-rpc-protocol')

const ALLOWED_METHOD_PROPS = new Set(['description', 'params', 'permission', 'resolve'])
const PERMISSIONS = { none: 0, read: 1, write: 2, admin: 3 }

const ADMIN = Object.freeze({ id: 'admin-id', email: 'admin@admin.net', permission: 'admin' })
const USER = Object.freeze({ id: 'user-id', email: 'user@example.net', permission: 'none' })

// XAPI errors xo-server turns into its own errors (the subset a host plugin call can give).
const XAPI_ERROR_TO_XO_ERROR = {
  HOST_OFFLINE: ([host], getId) => xoErrors.hostOffline({ host: getId(host) }),
  NO_HOSTS_AVAILABLE: () => xoErrors.noHostsAvailable(),
  SESSION_AUTHENTICATION_FAILED: () => xoErrors.authenticationFailed(),
}

// ---------------------------------------------------------------------------- params dialect

const typesOf = schema => new Set(schema.type === undefined ? [] : [].concat(schema.type))

// XO's params dialect to a standard JSON schema: object properties are required unless marked
// `optional`, other properties refused unless declared (`*` is a wildcard), strings non-empty
// unless a length, format or pattern says otherwise; `enum` schemas are taken as they are.
function xoToJsonSchema(schema) {
  if (schema.enum !== undefined) {
    return schema
  }
  const types = typesOf(schema)
  if (types.has('array') && schema.items !== undefined) {
    schema.items = Array.isArray(schema.items) ? schema.items.map(xoToJsonSchema) : xoToJsonSchema(schema.items)
  }
  if (types.has('object')) {
    const properties = schema.properties ?? {}
    for (const key of Object.keys(properties)) {
      properties[key] = xoToJsonSchema(properties[key])
    }
    if (schema.additionalProperties === undefined) {
      if (properties['*'] === undefined) {
        schema.additionalProperties = Object.keys(properties).length === 0
      } else {
        schema.additionalProperties = properties['*']
        delete properties['*']
      }
    } else if (typeof schema.additionalProperties === 'object') {
      schema.additionalProperties = xoToJsonSchema(schema.additionalProperties)
    }
    if (schema.required === undefined) {
      const required = []
      for (const [key, value] of Object.entries(properties)) {
        if (!value.optional) {
          required.push(key)
        }
        delete value.optional
      }
      if (required.length !== 0) {
        schema.required = required
      }
    }
  }
  const constrained = schema.minLength !== undefined || schema.format !== undefined || schema.pattern !== undefined
  if (types.has('string') && !constrained) {
    schema.minLength = 1
  }
  return schema
}

const ajv = new Ajv({ allErrors: true, allowUnionTypes: true, useDefaults: true })

function compileParams(params) {
  return ajv.compile(xoToJsonSchema({ type: 'object', properties: structuredClone(params) }))
}

// ---------------------------------------------------------------------------- XO objects

// The XO view of a xen-api object, as xo-server derives it (only the fields a plugin reads here).
function toXoObject(xapi, object) {
  const common = {
    id: object.$id,
    uuid: object.uuid,
    name_label: object.name_label,
    $pool: xapi.pool.$id,
    $poolId: xapi.pool.$id,
    _xapiRef: object.$ref,
  }
  switch (object.$type) {
    case 'pool':
      return { ...common, type: 'pool', master: object.$master?.$id }
    case 'host':
      return { ...common, type: 'host', address: object.address }
    case 'VM':
      return { ...common, type: 'VM', power_state: object.power_state }
    default:
      return undefined
  }
}

const serializeError = error => ({
  ...error,
  code: error.code,
  message: error.message,
  name: error.name,
  stack: error.stack,
})

// What a JSON-RPC client gets for an error answer (xo-lib rejects with an error like this).
class RemoteError extends Error {
  constructor({ code, message, data }) {
    super(message)
    this.name = 'RemoteError'
    this.code = code
    this.data = data
  }
}

// ---------------------------------------------------------------------------- the app

class FakeXo {
  #methods = Object.create(null)
  #routes = []
  #xapis = []
  #overrides = new Map()

  // `rest: false` is an xo-server from before plugin REST routes (no `registerRestRoutes`).
  constructor({ rest = true } = {}) {
    if (!rest) {
      this.registerRestRoutes = undefined
    }
  }

  // XAPI connections (xen-api `Xapi` objects, connected, objects fetched).
  addXapi(xapi) {
    this.#xapis.push(xapi)
  }

  // A stale view: the object as XO would show it before the events that changed it arrive.
  overrideObject(id, patch) {
    this.#overrides.set(id, patch)
  }

  clearOverrides() {
    this.#overrides.clear()
  }

  // ------------------------------------------------------------------ objects

  #objects() {
    const all = Object.create(null)
    const byRef = Object.create(null)
    for (const xapi of this.#xapis) {
      if (xapi.pool == null) {
        continue
      }
      for (const object of Object.values(xapi.objects.all)) {
        let xo = toXoObject(xapi, object)
        if (xo === undefined) {
          continue
        }
        if (this.#overrides.has(xo.id)) {
          xo = { ...xo, ...this.#overrides.get(xo.id) }
        }
        all[xo.id] = Object.freeze(xo)
        byRef[xo._xapiRef] = all[xo.id]
      }
    }
    return { all, byRef }
  }

  getObject(key, type) {
    const { all, byRef } = this.#objects()
    const object = all[key] ?? byRef[key]
    if (object === undefined) {
      xoErrors.noSuchObject(key, type)
    }
    if (type != null && !(Array.isArray(type) ? type.includes(object.type) : type === object.type)) {
      xoErrors.noSuchObject(key, type)
    }
    return object
  }

  getXapi(object, type) {
    if (typeof object === 'string') {
      object = this.getObject(object, type)
    }
    if (!object.$pool) {
      throw new Error(`object ${object.id} does not belong to a pool`)
    }
    const xapi = this.#xapis.find(xapi => xapi.pool?.$id === object.$pool)
    if (xapi === undefined) {
      throw new Error(`no connection found for object ${object.id}`)
    }
    return xapi
  }

  // ------------------------------------------------------------------ API methods

  get apiMethods() {
    return this.#methods
  }

  addApiMethod(name, method) {
    const methods = this.#methods
    if (name in methods) {
      throw new Error(`API method ${name} already exists`)
    }
    if (typeof method === 'string') {
      Object.defineProperty(methods, name, { configurable: true, enumerable: true, get: () => methods[method] })
    } else {
      if (typeof method !== 'function') {
        throw new TypeError(`API method ${name} is not a function`)
      }
      for (const prop of Object.keys(method)) {
        if (!ALLOWED_METHOD_PROPS.has(prop)) {
          throw new Error(`invalid prop ${prop} for API method ${name}`)
        }
      }
      const { description, params, permission, resolve } = method
      const validate = params === undefined ? undefined : compileParams(params)
      methods[name] = { fn: method, description, params, permission, resolve, validate }
    }
    let removed = false
    return () => {
      if (!removed) {
        removed = true
        delete methods[name]
      }
    }
  }

  addApiMethods(tree) {
    const removes = []
    const add = (node, base) => {
      for (const [key, value] of Object.entries(node)) {
        const name = base + key
        if (typeof value === 'string') {
          removes.push(this.addApiMethod(name, base + value))
        } else if (typeof value === 'function') {
          removes.push(this.addApiMethod(name, value))
        } else if (Array.isArray(value)) {
          removes.push(this.addApiMethod(name, ...value))
        } else {
          add(value, name + '.')
        }
      }
    }
    try {
      add(tree, '')
    } catch (error) {
      removes.forEach(remove => remove())
      throw error
    }
    let removed = false
    return () => {
      if (!removed) {
        removed = true
        removes.forEach(remove => remove())
      }
    }
  }

  // A JSON-RPC call as a client sees it (`user: null`: a connection that has not signed in):
  // params and result cross the wire as JSON; an error rejects with a RemoteError carrying the
  // wire's code, message and data.
  async call(name, params = {}, { user = ADMIN } = {}) {
    params = JSON.parse(JSON.stringify(params))
    let answer
    try {
      const result = await this.#callApiMethod(name, params, user)
      answer = JSON.parse(format.response(0, result))
    } catch (error) {
      answer = JSON.parse(format.error(0, error))
    }
    if ('error' in answer) {
      throw new RemoteError(answer.error)
    }
    return answer.result
  }

  async #callApiMethod(name, params, user) {
    const method = this.#methods[name]
    if (method === undefined) {
      throw new MethodNotFound(name)
    }
    try {
      this.#checkPermission(method, user)
      this.#checkParams(method, params)
      const resolved = this.#resolveParams(method, params)
      let result = await method.fn.call(this, resolved)
      if (result === undefined) {
        result = true
      }
      return result
    } catch (error) {
      const toXoError = error != null && XAPI_ERROR_TO_XO_ERROR[error.code]
      if (toXoError) {
        toXoError(error.params, ref => {
          try {
            return this.getObject(ref).id
          } catch {
            return ref
          }
        })
      }
      if (error?.toJsonRpcError === undefined && user?.permission === 'admin') {
        throw new JsonRpcError(error.message, undefined, serializeError(serializeError(error)))
      }
      throw error
    }
  }

  #checkPermission(method, user) {
    const { permission } = method
    if (permission === null) {
      return
    }
    if (user == null) {
      xoErrors.unauthorized(permission)
    }
    if (permission !== undefined && !(PERMISSIONS[user.permission] >= PERMISSIONS[permission])) {
      xoErrors.unauthorized(permission)
    }
  }

  #checkParams(method, params) {
    const ignorable = new Set()
    for (const key of Object.keys(params)) {
      if (key.endsWith('?')) {
        const raw = key.slice(0, -1)
        if (Object.hasOwn(params, raw)) {
          throw new Error(`conflicting keys: ${raw} and ${key}`)
        }
        params[raw] = params[key]
        delete params[key]
        ignorable.add(raw)
      }
    }
    const { validate } = method
    if (validate !== undefined && !validate(params)) {
      const errors = validate.errors.filter(error => {
        if (error.schemaPath === '#/additionalProperties' && ignorable.has(error.params.additionalProperty)) {
          delete params[error.params.additionalProperty]
          return false
        }
        return true
      })
      if (errors.length !== 0) {
        xoErrors.invalidParameters(errors)
      }
    }
  }

  #resolveParams(method, params) {
    if (!method.resolve) {
      return params
    }
    params = { ...params }
    for (const [key, [param, types]] of Object.entries(method.resolve)) {
      const id = params[param]
      if (id === undefined || id === null) {
        continue
      }
      const object = this.getObject(id, types)
      delete params[param]
      params[key] = object
    }
    return params
  }

  // ------------------------------------------------------------------ REST

  registerRestRoutes(routes, base = '/') {
    const mounted = routes.map(route => {
      checkRoute(route)
      const endpoint = path.posix.join('/rest/v0', base, route.endpoint)
      if (this.#routes.some(r => r.endpoint === endpoint && r.route.method === route.method)) {
        throw new Error(`route ${route.method.toUpperCase()} ${endpoint} already registered`)
      }
      const entry = { endpoint, route }
      this.#routes.push(entry)
      return entry
    })
    let removed = false
    return () => {
      if (!removed) {
        removed = true
        this.#routes = this.#routes.filter(entry => !mounted.includes(entry))
      }
    }
  }

  get restEndpoints() {
    return this.#routes.map(({ endpoint, route }) => `${route.method.toUpperCase()} ${endpoint}`)
  }

  // One REST request: { status, body }.
  async rest(method, url, { user = ADMIN } = {}) {
    const { pathname, searchParams } = new URL(url, 'http://xo.test')
    const query = {}
    for (const [key, value] of searchParams) {
      query[key] = key in query ? [].concat(query[key], value) : value
    }
    let match
    for (const entry of this.#routes) {
      const params = matchEndpoint(entry.endpoint, pathname)
      if (params !== undefined && entry.route.method === method.toLowerCase()) {
        match = { entry, params }
        break
      }
    }
    if (match === undefined) {
      return { status: 404, body: { error: `cannot ${method} ${pathname}` } }
    }
    const { route } = match.entry
    const res = new FakeResponse()
    try {
      if (user == null) {
        return { status: 401, body: { error: 'authentication required' } }
      }
      const hasAcl = (route.middlewares ?? []).some(m => m.name === 'acl')
      if (user.permission !== 'admin' && !hasAcl) {
        xoErrors.unauthorized()
      }
      checkFields(route.params, match.params, 'params')
      checkFields(route.query, query, 'query')
      const result = await route.callback({
        req: { method, params: match.params, query, path: pathname },
        res,
        next: () => {},
        restApi: { xoApp: this },
        createAction: async cb => cb({}),
      })
      if (res.headersSent) {
        return { status: res.statusCode, body: res.body }
      }
      if (result === undefined) {
        return { status: 204, body: undefined }
      }
      return { status: 200, body: JSON.parse(JSON.stringify(result)) }
    } catch (error) {
      return { status: restStatus(error), body: { error: error.message, data: error.data } }
    }
  }
}

class FakeResponse {
  statusCode = 200
  headersSent = false
  body = undefined
  status(code) {
    this.statusCode = code
    return this
  }
  json(value) {
    if (this.headersSent) {
      throw new Error('headers already sent')
    }
    this.headersSent = true
    this.body = JSON.parse(JSON.stringify(value))
    return this
  }
}

// XO's generic REST error handler, for the errors a plugin route can give.
function restStatus(error) {
  if (xoErrors.noSuchObject.is(error)) return 404
  if (xoErrors.unauthorized.is(error)) return 403
  if (xoErrors.invalidParameters.is(error)) return 422
  return 500
}

const ROUTE_KEYS = new Set([
  'method', 'endpoint', 'description', 'tags', 'params', 'query', 'body', 'responses', 'middlewares', 'scope',
  'callback', 'security',
])
const FIELD_KEYS = new Set(['type', 'example', 'optional', 'enum', 'fields', 'items'])
const PARAM_TYPES = new Set(['string', 'number', 'enum'])
const QUERY_TYPES = new Set(['string', 'boolean', 'number', 'enum'])

// The route definition type xo-server's plugin REST routes accept.
function checkRoute(route) {
  for (const key of Object.keys(route)) {
    if (!ROUTE_KEYS.has(key)) {
      throw new Error(`unknown route property ${key}`)
    }
  }
  if (!['get', 'post', 'put', 'delete', 'patch'].includes(route.method)) {
    throw new Error(`invalid route method ${route.method}`)
  }
  if (typeof route.endpoint !== 'string' || typeof route.callback !== 'function') {
    throw new Error('a route needs an endpoint string and a callback function')
  }
  const checkDefs = (defs, types, where) => {
    for (const [name, field] of Object.entries(defs ?? {})) {
      if (!types.has(field.type)) {
        throw new Error(`Unsupported type: ${field.type} (${where}.${name})`)
      }
      for (const key of Object.keys(field)) {
        if (!FIELD_KEYS.has(key)) {
          throw new Error(`unknown field property ${key} (${where}.${name})`)
        }
      }
    }
  }
  checkDefs(route.params, PARAM_TYPES, 'params')
  checkDefs(route.query, QUERY_TYPES, 'query')
  const declared = Object.keys(route.params ?? {})
  const inPath = [...route.endpoint.matchAll(/{(\w+)}/g)].map(m => m[1])
  for (const name of declared) {
    if (!inPath.includes(name)) {
      throw new Error(`param ${name} is not in the endpoint ${route.endpoint}`)
    }
  }
}

function checkFields(defs, values, where) {
  const errors = []
  for (const [name, field] of Object.entries(defs ?? {})) {
    const value = values[name]
    if (value === undefined) {
      if (!field.optional) {
        errors.push({ path: [where, name], message: 'Required' })
      }
    } else if (field.type === 'string' && typeof value !== 'string') {
      errors.push({ path: [where, name], message: 'Expected string' })
    } else if (field.type === 'enum' && !field.enum.includes(value)) {
      errors.push({ path: [where, name], message: 'Invalid enum value' })
    }
  }
  if (errors.length !== 0) {
    xoErrors.invalidParameters(undefined, errors)
  }
}

function matchEndpoint(endpoint, pathname) {
  const want = endpoint.split('/').filter(Boolean)
  const got = pathname.split('/').filter(Boolean)
  if (want.length !== got.length) {
    return undefined
  }
  const params = {}
  for (let i = 0; i < want.length; i++) {
    const m = /^{(\w+)}$/.exec(want[i])
    if (m) {
      params[m[1]] = decodeURIComponent(got[i])
    } else if (want[i] !== got[i]) {
      return undefined
    }
  }
  return params
}

module.exports = { ADMIN, USER, FakeXo, RemoteError, xoToJsonSchema }
