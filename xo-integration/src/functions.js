'use strict'

// The vgpu plugin's functions as Xen Orchestra API methods: one declaration of each function's
// arguments, from which the methods, their parameters and the REST routes are derived.
// test/function-table.test.js checks this table against `vgpu-admin functions` both ways.

// Each plugin argument (SPEC §4) and the XO parameter that carries it. `pool` is taken by the XO
// pool id, so the registry pool travels as `vgpuPool`. `yes` has no parameter: XO calls are not
// interactive, and `restart: true` is the caller's confirmation.
const ARGUMENTS = {
  'vm-uuid': {
    param: 'vm',
    schema: { type: 'string', description: "the VM's UUID" },
  },
  'vm-name': {
    param: 'vmName',
    schema: {
      type: 'string',
      description: "the VM's name-label (with vm: the name to store; alone: selects the VM)",
    },
  },
  pool: {
    param: 'vgpuPool',
    schema: { type: 'string', description: 'the registry pool: A or B' },
  },
  priority: {
    param: 'priority',
    schema: { type: ['string', 'integer'], description: 'low, medium or high (or 0, 1, 2)' },
  },
  'vm-id': {
    param: 'vmId',
    schema: { type: ['string', 'integer'], description: 'the vm_id, 1 to 4294967295' },
  },
  restart: {
    param: 'restart',
    schema: {
      type: 'boolean',
      description: 'restart a running VM now so that the change reaches QEMU (confirms the restart)',
    },
  },
  'dry-run': {
    param: 'dryRun',
    schema: { type: 'boolean', description: 'show what would change, change nothing' },
  },
  all: {
    param: 'all',
    schema: {
      type: 'boolean',
      description: 'every VM it applies to (sync: every registered VM; adopt: every VM with a device to adopt)',
    },
  },
  weight: {
    param: 'weight',
    schema: { type: ['string', 'integer'], description: "the mediator's scheduling weight, 1 to 100" },
  },
  rate: {
    param: 'rate',
    schema: { type: ['string', 'integer'], description: 'the most GPU jobs per second, 0 = unlimited' },
  },
  'queue-depth': {
    param: 'queueDepth',
    schema: {
      type: ['string', 'integer'],
      description: 'the most queued GPU jobs, 0 = unlimited (kept as it is when not given)',
    },
  },
  quarantined: {
    param: 'quarantined',
    schema: { type: 'boolean', description: 'only the quarantined VMs' },
  },
  action: {
    param: 'action',
    schema: { type: 'string', description: 'what to ask the mediator: metrics, health, connections or reload' },
  },
  prometheus: {
    param: 'prometheus',
    schema: { type: 'boolean', description: 'metrics in the Prometheus text format, with its samples parsed' },
  },
  'all-hosts': {
    param: 'allHosts',
    schema: {
      type: 'boolean',
      description: "every host's mediator, asked by the host given through each host's plugin",
    },
  },
  reload: {
    param: 'reload',
    schema: { type: 'boolean', description: "then have the host's mediator reload the registry" },
  },
}

// The plugin's `host` argument (the host whose mediator `mediator` asks) has no parameter: XO
// calls the plugin on the host named by its own `host` parameter directly, which is the same
// question without the hop through another host.

// `long`: may run for minutes (restarts a VM, walks every VM of the pool, waits on other hosts and
// their mediators), so it runs as an XAPI task (`callAsync`) rather than inside one HTTP request. `read`: changes nothing; also served by
// the REST API. `local`: acts on the host it is called on (SPEC §9), so it runs on the host the
// caller names in `host` instead of the master.
const FUNCTIONS = [
  {
    name: 'scan',
    description: 'every VM of the pool against the registry: registered, unregistered and stale',
    long: true,
    read: true,
    required: [],
    optional: [],
  },
  {
    name: 'register',
    description: "register a VM and write its vgpu device into the VM's device-model-args",
    long: true,
    required: ['pool', 'priority'],
    optional: ['vm-uuid', 'vm-name', 'vm-id', 'restart'],
  },
  {
    name: 'set-vm-id',
    description: "change a registered VM's vm_id (it must be unused)",
    long: true,
    required: ['vm-id'],
    optional: ['vm-uuid', 'vm-name', 'restart'],
  },
  {
    name: 'set-pool',
    description: "change a registered VM's registry pool",
    long: true,
    required: ['pool'],
    optional: ['vm-uuid', 'vm-name', 'restart'],
  },
  {
    name: 'set-priority',
    description: "change a registered VM's priority",
    long: true,
    required: ['priority'],
    optional: ['vm-uuid', 'vm-name', 'restart'],
  },
  {
    name: 'update',
    description: "change several of a registered VM's values at once",
    long: true,
    required: [],
    optional: ['vm-uuid', 'vm-name', 'pool', 'priority', 'vm-id', 'restart'],
  },
  {
    name: 'show',
    description: 'one registration with the live state of its VM',
    read: true,
    required: [],
    optional: ['vm-uuid', 'vm-name'],
  },
  {
    name: 'list',
    description: 'the registered VMs, by pool, priority (high first) and vm_id, with their controls',
    read: true,
    required: [],
    optional: ['pool', 'priority', 'quarantined'],
  },
  {
    name: 'list-pools',
    description: 'the registry pools with their VM counts',
    read: true,
    required: [],
    optional: [],
  },
  {
    name: 'show-pool',
    description: 'one registry pool and its VMs',
    read: true,
    required: ['pool'],
    optional: [],
  },
  {
    name: 'remove',
    description: "remove a registration and the VM's vgpu device",
    long: true,
    required: [],
    optional: ['vm-uuid', 'vm-name', 'restart'],
  },
  {
    name: 'status',
    description: 'a summary: pools, counts, drift, unregistered and stale VMs',
    long: true,
    read: true,
    required: [],
    optional: [],
  },
  {
    name: 'sync',
    description: 'apply the registry values again to VMs in drift or not applied',
    long: true,
    required: [],
    optional: ['vm-uuid', 'vm-name', 'all', 'dry-run', 'restart'],
  },
  {
    name: 'refresh',
    description: "refresh one host's replica of the registry from the copy in XAPI",
    long: true,
    local: true,
    required: [],
    optional: ['reload'],
  },
  {
    name: 'adopt',
    description: 'register VMs that carry a vgpu device but are not in the registry, with its values',
    long: true,
    required: [],
    optional: ['vm-uuid', 'vm-name', 'all', 'dry-run'],
  },
  {
    name: 'rebuild',
    description: "rebuild the master's registry from the copy in XAPI (after a backup), then adopt",
    long: true,
    required: [],
    optional: ['dry-run'],
  },
  {
    name: 'set-weight',
    description: "change a registered VM's scheduling weight (read by the mediator on every request)",
    long: true,
    required: ['weight'],
    optional: ['vm-uuid', 'vm-name'],
  },
  {
    name: 'set-rate-limit',
    description: "change a registered VM's rate limit and queue depth (in effect once the mediators reload)",
    long: true,
    required: ['rate'],
    optional: ['vm-uuid', 'vm-name', 'queue-depth'],
  },
  {
    name: 'quarantine',
    description: 'have the mediators reject new GPU work from a registered VM',
    long: true,
    required: [],
    optional: ['vm-uuid', 'vm-name'],
  },
  {
    name: 'clear-quarantine',
    description: "lift a VM's quarantine and zero its error count",
    long: true,
    required: [],
    optional: ['vm-uuid', 'vm-name'],
  },
  {
    name: 'show-weights',
    description: 'the registered VMs with their scheduling weights',
    read: true,
    required: [],
    optional: ['pool'],
  },
  {
    name: 'show-rate-limits',
    description: 'the registered VMs with their rate limits, queue depths and quarantine',
    read: true,
    required: [],
    optional: ['pool'],
  },
  {
    name: 'mediator',
    description: "ask a host's GPU mediator over its admin socket: metrics, health, connections or reload",
    long: true,
    read: true,
    local: true,
    required: ['action'],
    optional: ['prometheus', 'all-hosts'],
  },
]

// `set-vm-id` -> `setVmId`
const methodName = fn => fn.replace(/-([a-z])/g, (_, letter) => letter.toUpperCase())

// The XO parameter that carries the pool's id (XO's own parameter name for a pool).
const POOL_PARAM = 'pool'

// The XO parameter that names the host a `local` function runs on (XO's name for a host).
const HOST_PARAM = 'host'

// XO's params dialect: every parameter required unless `optional`, no other keys accepted,
// strings non-empty.
function methodParams(fn) {
  const params = {
    [POOL_PARAM]: { type: 'string', description: 'the pool (its XO id, the pool UUID)' },
  }
  if (fn.local) {
    params[HOST_PARAM] = { type: 'string', description: 'the host of the pool to run it on: its UUID or name-label' }
  }
  for (const key of fn.required) {
    params[ARGUMENTS[key].param] = { ...ARGUMENTS[key].schema }
  }
  for (const key of fn.optional) {
    params[ARGUMENTS[key].param] = { ...ARGUMENTS[key].schema, optional: true }
  }
  return params
}

// The plugin's arguments (strings) from a method's parameters.
function pluginArgs(fn, params) {
  const args = {}
  for (const key of [...fn.required, ...fn.optional]) {
    const value = params[ARGUMENTS[key].param]
    if (value !== undefined) {
      args[key] = String(value)
    }
  }
  if (params.restart === true) {
    args.yes = 'true'
  }
  return args
}

// How callPlugin runs a function for these parameters: as a task or not, and on which host
// (`undefined`: the pool's master).
function callOptions(fn, params) {
  return { long: Boolean(fn.long), host: fn.local ? params[HOST_PARAM] : undefined }
}

module.exports = {
  ARGUMENTS,
  FUNCTIONS,
  HOST_PARAM,
  POOL_PARAM,
  callOptions,
  methodName,
  methodParams,
  pluginArgs,
}
