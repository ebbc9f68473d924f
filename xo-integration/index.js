'use strict'

const { apiMethods } = require('./src/api.js')
const { restRoutes } = require('./src/rest.js')

// xo-server finds this package as a `xo-server-vgpu` directory in its plugin lookup paths and
// calls the default export with `{ xo, staticConfig, getDataDir }`. The plugin needs no
// configuration: it talks to the `vgpu` host plugin of each pool's master through XO's own XAPI
// connections.
function createPlugin({ xo }) {
  let removers = []

  return {
    load() {
      const added = [xo.addApiMethods({ vgpu: apiMethods(xo) })]
      try {
        // Feature-detected: older xo-server versions have no plugin REST routes.
        if (typeof xo.registerRestRoutes === 'function') {
          added.push(xo.registerRestRoutes(restRoutes(xo)))
        }
      } catch (error) {
        added.forEach(remove => remove())
        throw error
      }
      removers = added
    },

    unload() {
      removers.splice(0).forEach(remove => remove())
    },
  }
}

module.exports = createPlugin
// Babel-style ES module interop: xo-server takes `default` when there is one.
module.exports.default = createPlugin
