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

const hostSummary = h => ({ uuid: h.uuid, name_label: h.name_label })
const byNameThenUuid = (a, b) => a.name_label.localeCompare(b.name_label) || a.uuid.localeCompare(b.uuid)

// The host `key` (a UUID or a name-label) among the hosts of the pool this XAPI connection is
// for: a host of another pool is as unknown as a host that does not exist. Refused before any
// call, as VGPU_INVALID_ARGUMENT like the plugin's own argument errors, with the pool's hosts.
function hostOfPool(xapi, pool, key) {
  const hosts = Object.values(xapi.objects.all).filter(o => o.$type === 'host')
  let found = hosts.filter(h => h.uuid === key)
  if (found.length === 0) {
    found = hosts.filter(h => h.name_label === key)
  }
  if (found.length === 1) {
    return { ...hostSummary(found[0]), _xapiRef: found[0].$ref }
  }
  const details = { argument: 'host', value: key, pool: pool.uuid }
  if (found.length === 0) {
    throw new VgpuError(
      `host "${key}" is not a host of pool ${pool.name_label} (${pool.uuid})`,
      'VGPU_INVALID_ARGUMENT',
      { ...details, reason: 'not a host of this pool', hosts: hosts.map(hostSummary).sort(byNameThenUuid) }
    )
  }
  throw new VgpuError(
    `several hosts of pool ${pool.name_label} (${pool.uuid}) are named "${key}": give the host's UUID`,
    'VGPU_INVALID_ARGUMENT',
    { ...details, reason: 'several hosts have this name-label', hosts: found.map(hostSummary).sort(byNameThenUuid) }
  )
}

// Runs `fn` of the vgpu plugin on a host of the XO pool `poolId` (`host`, a UUID or a name-label,
// for the functions that act on the host they are called on; else the master); returns its
// parsed answer.
async function callPlugin(xo, poolId, fn, args, { long = false, host } = {}) {
  // XO's own lookups: an unknown id (or the id of something else than a pool) is its
  // no-such-object error.
  const pool = xo.getObject(poolId, 'pool')
  const xapi = xo.getXapi(pool)
  const target = host === undefined ? xo.getObject(pool.master, 'host') : hostOfPool(xapi, pool, host)

  let answer
  try {
    answer = long
      ? await xapi.callAsync('host.call_plugin', target._xapiRef, PLUGIN, fn, args)
      : await xapi.call('host.call_plugin', target._xapiRef, PLUGIN, fn, args)
  } catch (error) {
    throw translateError(error, target, fn)
  }
  try {
    return JSON.parse(answer)
  } catch {
    throw new VgpuError(
      `the vgpu plugin on ${target.name_label} (${target.uuid}) answered something that is not JSON`,
      'VGPU_INTERNAL',
      { host: target.uuid, function: fn, answer: String(answer).slice(0, 2000) }
    )
  }
}

module.exports = { PLUGIN, VgpuError, callPlugin, translateError }
