#!/usr/bin/env node
/*
 * kafkajs driver for the Sluice compat suite (tests/compat/test_kafkajs.py).
 *
 *   node sluice_kafkajs.js <module> produce <bootstrap> <topic> [options]
 *       --count N          records to send (default 1000)
 *       --batch B          records per producer.send() call (default 100)
 *       --idempotent BOOL  true|false (default false); true uses kafkajs'
 *                          documented idempotent producer ({idempotent: true,
 *                          maxInFlightRequests: 1}); acks stay at the default (-1)
 *       --prefix P         value prefix (default "v"); values are P-000123,
 *                          keys k<i % keys>, header idx=<i>
 *       --keys K           number of distinct keys (default 97)
 *       --pause-ms MS      sleep between sends (default 0)
 *   node sluice_kafkajs.js <module> consume-group <bootstrap> <topic>[,<topic>...] [options]
 *       --group G          group id (default: random)
 *       --read-uncommitted BOOL  the consumer's readUncommitted (default: not set, i.e.
 *                          kafkajs' default, false: read_committed)
 *       --count N          stop after N records (default 1)
 *       --drain-ms MS      keep reading this long after N to catch extras (default 1500)
 *   node sluice_kafkajs.js <module> admin <bootstrap> <op> [<op> ...]
 *       create:<topic>:<partitions>   createTopics (waitForLeaders)
 *       list                          listTopics
 *       metadata:<topic>[,<topic>...] fetchTopicMetadata
 *       offsets:<topic>               fetchTopicOffsets (low/high watermarks)
 *       describe-cluster              describeCluster
 *
 * Common options: --timeout-ms MS (overall deadline, default 60000).
 *
 * <module> is an npm package name resolved from the installed client project
 * (SLUICE_JS_CLIENTS, default <repo>/.js-clients; see scripts/install-js-clients.sh),
 * e.g. kafkajs2 (kafkajs 2.2.4) or kafkajs1 (kafkajs 1.16.0).
 *
 * Output: one JSON object per line on stdout, each with an "event" field.  The
 * last line is {"event":"done",...} on success; failures print
 * {"event":"error",...} and exit non-zero (1 = operation failed, 2 = usage,
 * 3 = deadline exceeded).  kafkajs logs at ERROR level only, as JSON on stderr.
 */
'use strict'

const path = require('path')

const USAGE = 'usage: node sluice_kafkajs.js <kafkajs-module> ' +
  '(produce <bootstrap> <topic> | consume-group <bootstrap> <topic> | admin <bootstrap> <op>...) [--opt value]...'

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function fail(code, obj) {
  out(Object.assign({ event: 'error' }, obj))
  // Let stdout drain before exiting.
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 1000).unref()
}

function describeError(e) {
  if (!e) return { message: String(e) }
  const d = { name: e.name, message: e.message }
  if (e.type) d.type = e.type
  if (e.code !== undefined) d.code = e.code
  if (e.retriable !== undefined) d.retriable = e.retriable
  if (e.cause) d.cause = describeError(e.cause)
  if (Array.isArray(e.errors)) d.errors = e.errors.slice(0, 5).map(describeError)
  return d
}

function parseArgs(argv) {
  const positional = []
  const opts = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a.startsWith('--')) {
      const k = a.slice(2)
      if (i + 1 >= argv.length) throw new Error('option --' + k + ' needs a value')
      opts[k] = argv[++i]
    } else {
      positional.push(a)
    }
  }
  return { positional, opts }
}

function intOpt(opts, name, dflt) {
  if (opts[name] === undefined) return dflt
  const v = Number(opts[name])
  if (!Number.isInteger(v) || v < 0) throw new Error('--' + name + ' must be a non-negative integer')
  return v
}

function boolOpt(opts, name, dflt) {
  if (opts[name] === undefined) return dflt
  if (opts[name] === 'true') return true
  if (opts[name] === 'false') return false
  throw new Error('--' + name + ' must be true or false')
}

function loadKafkajs(name) {
  const base = process.env.SLUICE_JS_CLIENTS ||
    path.resolve(__dirname, '..', '..', '..', '.js-clients')
  const main = require.resolve(name, { paths: [base] })
  const mod = require(main)
  const pkg = require(require.resolve(name + '/package.json', { paths: [base] }))
  return { mod, version: pkg.version }
}

function makeKafka(kjs, bootstrap, clientId) {
  const { Kafka, logLevel } = kjs
  const logCreator = () => ({ namespace, level, label, log }) => {
    const { message, timestamp, stack, ...extra } = log
    process.stderr.write(JSON.stringify({ level: label, namespace, message, ...extra }) + '\n')
  }
  return new Kafka({
    clientId,
    brokers: [bootstrap],
    logLevel: logLevel.ERROR,
    logCreator,
    connectionTimeout: 3000,
    requestTimeout: 15000,
    enforceRequestTimeout: true,
    // No client-level retry: producers keep kafkajs' defaults (see produce()).
  })
}

// Retries for the admin client and the consumer: quicker than kafkajs'
// defaults so that failures surface within the test timeouts.
const FAST_RETRY = { initialRetryTime: 100, maxRetryTime: 2000, retries: 8 }

/** An operation failure with extra context for the error line. */
class OpError extends Error {
  constructor(cause, details) {
    super(cause && cause.message)
    this.original = cause
    this.details = details
  }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function pad6(i) {
  return String(i).padStart(6, '0')
}

// ------------------------------------------------------------------- produce

async function produce(kafka, version, bootstrap, topic, opts) {
  const count = intOpt(opts, 'count', 1000)
  const batch = Math.max(1, intOpt(opts, 'batch', 100))
  const idempotent = boolOpt(opts, 'idempotent', false)
  const prefix = opts.prefix || 'v'
  const nkeys = Math.max(1, intOpt(opts, 'keys', 97))
  const pauseMs = intOpt(opts, 'pause-ms', 0)

  const producerConf = { allowAutoTopicCreation: false }
  if (idempotent) {
    // kafkajs documents the idempotent producer as {idempotent: true} with
    // acks -1 (the default) and "retries default to MAX_SAFE_INTEGER", and its
    // examples add maxInFlightRequests: 1.  In both 1.16 and 2.2 the retries
    // default is lost when the producer's retry options are merged with the
    // client's (it ends up at 5), so it is spelled out here.
    producerConf.idempotent = true
    producerConf.maxInFlightRequests = 1
    producerConf.retry = { retries: Number.MAX_SAFE_INTEGER }
  }
  const producer = kafka.producer(producerConf)
  const t0 = Date.now()
  try {
    await producer.connect() // the idempotent producer sends InitProducerId here
  } catch (e) {
    const details = { op: 'producer.connect', idempotent }
    if (idempotent && e && e.name === 'KafkaJSServerDoesNotSupportApiKey') {
      details.hint = 'the idempotent producer needs InitProducerId (API key 22) in ApiVersions'
    }
    throw new OpError(e, details)
  }
  out({ event: 'connected', client: version, idempotent, ms: Date.now() - t0 })

  let acked = 0
  for (let first = 0, sendNo = 0; first < count; first += batch, sendNo++) {
    const n = Math.min(batch, count - first)
    const messages = []
    for (let i = first; i < first + n; i++) {
      messages.push({
        key: 'k' + (i % nkeys),
        value: prefix + '-' + pad6(i),
        headers: { idx: String(i) },
      })
    }
    let res
    const ts = Date.now()
    try {
      res = await producer.send({ topic, messages }) // acks: kafkajs default (-1, all)
    } catch (e) {
      await producer.disconnect().catch(() => {})
      throw new OpError(e, { op: 'send', send: sendNo, first, count: n, acked })
    }
    acked += n
    out({
      event: 'sent',
      send: sendNo,
      first,
      count: n,
      ms: Date.now() - ts,
      results: res.map(r => ({
        topic: r.topicName,
        partition: r.partition,
        errorCode: r.errorCode,
        baseOffset: r.baseOffset === undefined ? null : String(r.baseOffset),
      })),
    })
    if (pauseMs) await sleep(pauseMs)
  }
  await producer.disconnect()
  out({ event: 'done', sent: acked, ms: Date.now() - t0 })
}

// ------------------------------------------------------------- consume-group

async function consumeGroup(kafka, version, bootstrap, topic, opts) {
  const want = intOpt(opts, 'count', 1)
  const drainMs = intOpt(opts, 'drain-ms', 1500)
  const groupId = opts.group || 'kjs-' + Math.random().toString(16).slice(2, 10)
  const topics = topic.split(',').filter(Boolean)

  const consumerConf = {
    groupId,
    sessionTimeout: 10000,
    heartbeatInterval: 1000,
    maxWaitTimeInMs: 500,
    allowAutoTopicCreation: false,
    retry: FAST_RETRY,
  }
  if (opts['read-uncommitted'] !== undefined) {
    consumerConf.readUncommitted = boolOpt(opts, 'read-uncommitted', false)
  }
  const consumer = kafka.consumer(consumerConf)
  const t0 = Date.now()
  let got = 0
  let reached
  const reachedP = new Promise(resolve => { reached = resolve })
  let stopping = false

  consumer.on(consumer.events.GROUP_JOIN, e => {
    out({ event: 'group-join', ms: Date.now() - t0, generationId: e.payload.generationId,
          memberAssignment: e.payload.memberAssignment })
  })
  consumer.on(consumer.events.CRASH, e => {
    out({ event: 'crash', error: describeError(e.payload.error), restart: e.payload.restart })
  })

  await consumer.connect()
  // One subscribe() per topic: kafkajs 1.16 has no `topics` array.
  for (const t of topics) await consumer.subscribe({ topic: t, fromBeginning: true })
  await consumer.run({
    autoCommit: true,
    eachMessage: async ({ topic: t, partition, message }) => {
      if (stopping) return
      const headers = {}
      for (const [k, v] of Object.entries(message.headers || {})) {
        headers[k] = v === null || v === undefined ? null : v.toString()
      }
      out({
        event: 'msg',
        topic: t,
        partition,
        offset: String(message.offset),
        key: message.key === null ? null : message.key.toString(),
        value: message.value === null ? null : message.value.toString(),
        headers,
      })
      got++
      if (got === want) reached()
    },
  })
  if (want === 0) reached()
  await reachedP
  const firstAllMs = Date.now() - t0
  await sleep(drainMs)
  stopping = true
  await consumer.disconnect()
  out({ event: 'done', count: got, all_ms: firstAllMs, ms: Date.now() - t0, group: groupId, client: version })
}

// --------------------------------------------------------------------- admin

async function adminOps(kafka, version, bootstrap, ops) {
  const admin = kafka.admin({ retry: FAST_RETRY })
  await admin.connect()
  for (const op of ops) {
    const [name, ...args] = op.split(':')
    const t = Date.now()
    if (name === 'create') {
      const [topic, parts] = args
      const created = await admin.createTopics({
        topics: [{ topic, numPartitions: Number(parts), replicationFactor: 1 }],
        waitForLeaders: true,
        timeout: 10000,
      })
      out({ event: 'create', topic, partitions: Number(parts), created, ms: Date.now() - t })
    } else if (name === 'list') {
      const topics = await admin.listTopics()
      out({ event: 'list', topics: topics.slice().sort(), ms: Date.now() - t })
    } else if (name === 'metadata') {
      const topics = args.join(':').split(',').filter(Boolean)
      const md = await admin.fetchTopicMetadata({ topics })
      out({
        event: 'metadata',
        topics: md.topics.map(tm => ({
          name: tm.name,
          partitions: tm.partitions
            .map(p => ({ partition: p.partitionId, leader: p.leader, replicas: p.replicas,
                         isr: p.isr, errorCode: p.partitionErrorCode }))
            .sort((a, b) => a.partition - b.partition),
        })),
        ms: Date.now() - t,
      })
    } else if (name === 'offsets') {
      const topic = args.join(':')
      const offs = await admin.fetchTopicOffsets(topic)
      out({
        event: 'offsets',
        topic,
        partitions: offs
          .map(o => ({ partition: o.partition, low: String(o.low), high: String(o.high) }))
          .sort((a, b) => a.partition - b.partition),
        ms: Date.now() - t,
      })
    } else if (name === 'describe-cluster') {
      const c = await admin.describeCluster()
      out({ event: 'describe-cluster', brokers: c.brokers, controller: c.controller,
            clusterId: c.clusterId, ms: Date.now() - t })
    } else {
      throw new Error('unknown admin op ' + JSON.stringify(op))
    }
  }
  await admin.disconnect()
  out({ event: 'done', client: version })
}

// ---------------------------------------------------------------------- main

/**
 * A driver's main: parses `<module> <mode> <bootstrap> [args...] [--opts]`, arms the
 * --timeout-ms deadline, loads kafkajs, then runs `dispatch(ctx)`; a dispatch that returns
 * false did not know the mode (or its arguments). Failures are printed as one JSON line.
 */
async function runMain(usage, dispatch) {
  let parsed
  try {
    parsed = parseArgs(process.argv.slice(2))
  } catch (e) {
    return fail(2, { op: 'usage', error: describeError(e), usage })
  }
  const { positional, opts } = parsed
  const [moduleName, mode, bootstrap, ...rest] = positional
  if (!moduleName || !mode || !bootstrap) {
    return fail(2, { op: 'usage', usage })
  }
  const timeoutMs = Number(opts['timeout-ms'] || 60000)
  const deadline = setTimeout(() => {
    fail(3, { op: mode, error: { name: 'Deadline', message: 'no result within ' + timeoutMs + ' ms' } })
  }, timeoutMs)
  deadline.unref()

  let kjs
  try {
    kjs = loadKafkajs(moduleName)
  } catch (e) {
    return fail(2, { op: 'load', error: describeError(e),
                     hint: 'run scripts/install-js-clients.sh' })
  }
  const kafka = makeKafka(kjs.mod, bootstrap, 'sluice-compat-' + moduleName)
  try {
    if (!await dispatch({ kafka, kjs, moduleName, mode, bootstrap, rest, opts })) {
      return fail(2, { op: 'usage', usage })
    }
  } catch (e) {
    if (e instanceof OpError) return fail(1, Object.assign({ error: describeError(e.original) }, e.details))
    return fail(1, { op: mode, error: describeError(e) })
  }
  clearTimeout(deadline)
  // kafkajs may leave timers behind; exit explicitly once stdout is flushed.
  process.stdout.write('', () => process.exit(0))
}

function main() {
  return runMain(USAGE, async ({ kafka, kjs, mode, bootstrap, rest, opts }) => {
    if (mode === 'produce' && rest.length === 1) {
      await produce(kafka, kjs.version, bootstrap, rest[0], opts)
    } else if (mode === 'consume-group' && rest.length === 1) {
      await consumeGroup(kafka, kjs.version, bootstrap, rest[0], opts)
    } else if (mode === 'admin' && rest.length > 0) {
      await adminOps(kafka, kjs.version, bootstrap, rest)
    } else {
      return false
    }
    return true
  })
}

// The transaction driver (sluice_kafkajs_txn.js) shares the plumbing.
module.exports = {
  out, fail, describeError, parseArgs, intOpt, boolOpt, loadKafkajs, makeKafka, FAST_RETRY, OpError, sleep,
  runMain,
}

if (require.main === module) {
  process.on('unhandledRejection', e => fail(1, { op: 'unhandledRejection', error: describeError(e) }))
  main()
}
