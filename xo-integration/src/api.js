'use strict'

const { callPlugin } = require('./call.js')
const { FUNCTIONS, POOL_PARAM, callOptions, methodName, methodParams, pluginArgs } = require('./functions.js')

// The `vgpu.*` API methods, for `xo.addApiMethods({ vgpu: … })`. xo-server calls a method with
// the XO app as `this`, so each method uses the `xo` it was made with, never `this`. A method
// calls the plugin on the pool's master, or for a `local` function on the host given in `host`.
function apiMethods(xo) {
  const methods = {}
  for (const fn of FUNCTIONS) {
    const method = params =>
      callPlugin(xo, params[POOL_PARAM], fn.name, pluginArgs(fn, params), callOptions(fn, params))
    methods[methodName(fn.name)] = Object.assign(method, {
      description: fn.description,
      params: methodParams(fn),
      permission: 'admin',
    })
  }
  return methods
}

module.exports = { apiMethods }
