'use strict'

const PLUGIN = 'vgpu'

// Errors xapi gives when the host has no such plugin, or a plugin without that function (an older
// vgpu plugin): both mean this version is not installed there.
const NOT_INSTALLED = new Set(['XENAPI_MISSING_PLUGIN', 'UNKNOWN_XENAPI_PLUGIN_FUNCTION'])

// xo-server sends an error it does not know to an admin as JSON-RPC error -32000 with the message,
// and the error's own enumerable properties in `data`: the string code and the details travel
// there (`data.code`, `data.details`).
class VgpuError extends Error {
  constructor(message, code, details) {
    super(message)
    this.name = 'VgpuError'
    this.code = code
    this.details = details
  }
}

function parseDetails(text) {
  if (text === undefined || text === '') {
    return null
  }
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

function translateError(error, host, fn) {
  const code = error != null ? error.code : undefined
  if (typeof code === 'string' && code.startsWith('VGPU_')) {
    const [message = code, details] = Array.isArray(error.params) ? error.params : []
    return new VgpuError(message, code, parseDetails(details))
  }
  if (NOT_INSTALLED.has(code)) {
    let message = `vgpu plugin not installed on ${host.name_label} (${host.uuid})`
    if (code === 'UNKNOWN_XENAPI_PLUGIN_FUNCTION') {
      message += `: the vgpu plugin there has no function "${fn}"; install this version on every host`
    }
    return new VgpuError(message, code, { host: host.uuid, host_name: host.name_label, function: fn })
  }
  // Other XAPI errors stay as they are: xo-server knows several (HOST_OFFLINE …) by their code.
  return error
}

// Runs `fn` of the vgpu plugin on the master of the XO pool `poolId`; returns its parsed answer.
async function callPlugin(xo, poolId, fn, args, { long = false } = {}) {
  // XO's own lookups: an unknown id (or the id of something else than a pool) is its
  // no-such-object error.
  const pool = xo.getObject(poolId, 'pool')
  const master = xo.getObject(pool.master, 'host')
  const xapi = xo.getXapi(pool)

  let answer
  try {
    answer = long
      ? await xapi.callAsync('host.call_plugin', master._xapiRef, PLUGIN, fn, args)
      : await xapi.call('host.call_plugin', master._xapiRef, PLUGIN, fn, args)
  } catch (error) {
    throw translateError(error, master, fn)
  }
  try {
    return JSON.parse(answer)
  } catch {
    throw new VgpuError(
      `the vgpu plugin on ${master.name_label} (${master.uuid}) answered something that is not JSON`,
      'VGPU_INTERNAL',
      { host: master.uuid, function: fn, answer: String(answer).slice(0, 2000) }
    )
  }
}

module.exports = { PLUGIN, VgpuError, callPlugin, translateError }
