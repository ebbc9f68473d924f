'use strict'

// A recording stand-in for a xen-api `Xapi` with a cached pool of two hosts, for the tests that
// look at what the plugin sends (the integration tests use the real `Xapi`). It records each call
// as { via: 'call' | 'callAsync', method, args } and answers with `answer(call)`.

const POOL = { uuid: '0c3b1a4e-5d2f-4e61-9a7b-3f8e2d1c0b9a', name_label: 'stub-pool' }
const MASTER = { uuid: '1f0e2d3c-4b5a-4978-8695-a4b3c2d1e0f9', name_label: 'stub-master' }
const MEMBER = { uuid: '2e1d0c9b-8a7f-4e6d-9c5b-4a3f2e1d0c9b', name_label: 'stub-member' }
const VM = { uuid: '3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a', name_label: 'stub-vm' }

const ref = uuid => `OpaqueRef:${uuid}`

class StubXapi {
  constructor(answer = () => '{}') {
    this.answer = answer
    this.calls = []
    const record = (type, o, extra = {}) =>
      Object.freeze(Object.assign(Object.create(null), o, { $id: o.uuid, $ref: ref(o.uuid), $type: type }, extra))
    const master = record('host', MASTER)
    const member = record('host', MEMBER)
    this.pool = record('pool', POOL, { master: master.$ref, $master: master })
    const vm = record('VM', VM, { power_state: 'Running' })
    this.objects = { all: Object.fromEntries([this.pool, master, member, vm].map(o => [o.$id, o])) }
  }

  async #record(via, method, args) {
    const call = { via, method, args }
    this.calls.push(call)
    return this.answer(call)
  }

  call(method, ...args) {
    return this.#record('call', method, args)
  }

  callAsync(method, ...args) {
    return this.#record('callAsync', method, args)
  }
}

// An XAPI error as xen-api raises it.
function xapiError(code, params = []) {
  return Object.assign(new Error(`${code}(${params.join(', ')})`), { name: 'XapiError', code, params })
}

module.exports = { MASTER, MEMBER, POOL, VM, StubXapi, ref, xapiError }
