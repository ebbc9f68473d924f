'use strict'

const { VgpuError, callPlugin } = require('./call.js')
const { ARGUMENTS, FUNCTIONS, HOST_PARAM, callOptions, pluginArgs } = require('./functions.js')

// Where xo-server offers plugin REST routes, the read functions are also served as
// GET /rest/v0/plugins/vgpu/pools/{id}/<function>, with the method's parameters in the query
// string (`host` too, for a function that acts on the host it runs on). A route without an ACL
// middleware is for administrators only.
const BASE = 'plugins/vgpu/pools'

// xo-server's REST error handler answers 500 for errors it does not know, without their code:
// a vgpu error is answered here instead, in the handler's shape, with the code and details.
const HTTP_STATUS = {
  VGPU_INVALID_ARGUMENT: 422,
  VGPU_AMBIGUOUS_VM_NAME: 422,
  VGPU_VM_NOT_FOUND: 404,
  VGPU_NOT_REGISTERED: 404,
  VGPU_XAPI_ERROR: 502,
  XENAPI_MISSING_PLUGIN: 503,
  UNKNOWN_XENAPI_PLUGIN_FUNCTION: 503,
}

function queryField(key, required) {
  const field = { type: 'string' }
  if (!required) {
    field.optional = true
  }
  return [ARGUMENTS[key].param, field]
}

function restRoutes(xo) {
  return FUNCTIONS.filter(fn => fn.read).map(fn => ({
    method: 'get',
    endpoint: `${BASE}/{id}/${fn.name}`,
    description: `${fn.description} (the vgpu plugin's "${fn.name}" on ${fn.local ? '`host`' : "the pool's master"})`,
    tags: ['vgpu'],
    params: { id: { type: 'string' } },
    query: Object.fromEntries([
      ...(fn.local ? [[HOST_PARAM, { type: 'string' }]] : []),
      ...fn.required.map(key => queryField(key, true)),
      ...fn.optional.map(key => queryField(key, false)),
    ]),
    callback: async ({ req, res }) => {
      try {
        const args = pluginArgs(fn, req.query)
        return await callPlugin(xo, req.params.id, fn.name, args, callOptions(fn, req.query))
      } catch (error) {
        if (!(error instanceof VgpuError)) {
          throw error
        }
        res.status(HTTP_STATUS[error.code] ?? 500).json({
          error: error.message,
          data: { code: error.code, details: error.details },
        })
      }
    },
  }))
}

module.exports = { BASE, HTTP_STATUS, restRoutes }
