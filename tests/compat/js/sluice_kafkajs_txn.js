#!/usr/bin/env node
/*
 * kafkajs transactions driver for the Sluice compat suite (test_kafkajs.py).
 * The transactional producers are configured as kafkajs documents them and
 * nothing more: {transactionalId, idempotent: true, maxInFlightRequests: 1}.
 *
 *   node sluice_kafkajs_txn.js <module> txn-produce <bootstrap> [options]
 *       --txn-id ID        transactional id
 *       --topics SPEC      a:3,b:2 (topic:partitions); every transaction writes
 *                          to every partition of every topic
 *       --plan PLAN        comma-separated steps: C<n> a transaction of n records
 *                          per partition, committed; A<n> the same, aborted;
 *                          P<n> n plain records per partition from a
 *                          non-transactional producer (kafkajs' defaults).
 *                          A transaction's records go out two rounds at a time,
 *                          alternately as one txn.send() per topic and as one
 *                          txn.sendBatch() over all topics.
 *       Values are <step tag>|<last 4 chars of topic>-<partition>|<round, 3
 *       digits>, the step tag being the step's letter and index (C0, A1, P2..).
 *       Events: ack {step, kind, topic, p, o, v} per record (its offset is the
 *       partition's baseOffset of its send + its place in that send), step
 *       {step, kind, outcome, ms} once a step ends.
 *
 *   node sluice_kafkajs_txn.js <module> txn-offsets <bootstrap> [options]
 *       --txn-id ID --group G --in TOPIC --out TOPIC
 *       --plan PLAN        comma-separated steps C:<o0>/<o1>/... (commit) or
 *                          A:<o0>/<o1>/... (abort): a transaction that sends one
 *                          record to each partition of OUT and, with
 *                          txn.sendOffsets(), offset o<p> of IN's partition p for
 *                          group G
 *       --settle-ms MS     after an end, how long the group's offsets are watched
 *                          (default 1500; a commit's watch ends once they show it)
 *       Events: ack (as above), offsets {step, when: "open"} (admin.fetchOffsets
 *       after sendOffsets, before the end), offsets {step, when: "end", outcome,
 *       seen: [{ms, offsets}...] every distinct value seen after the end}.
 *       Offsets are {partition: offset or null (none committed)}.
 *
 *   node sluice_kafkajs_txn.js <module> txn-fence <bootstrap> [options]
 *       --txn-id ID --topic T (2+ partitions)
 *       --next OP          what the fenced producer does next: commit, send
 *                          (to partition 0, already in its transaction) or
 *                          send-new (to partition 1, not yet in it)
 *       Producer 1 begins a transaction and sends to partition 0; producer 2
 *       (another Kafka client object, same transactional id) begins its own;
 *       producer 1 then does OP (event p1-result {ok, error}); producer 2 sends
 *       to partitions 0 and 1 and commits.  Events: ack (step 0: producer 1,
 *       step 1: producer 2), p2-began {ms}, p1-result, step.
 *
 * Common options: --timeout-ms MS (overall deadline, default 60000).
 * Output: one JSON object per line on stdout, as sluice_kafkajs.js (whose
 * plumbing this shares); the last line is {"event":"done"} on success.
 */
'use strict'

const {
  out, fail, describeError, intOpt, makeKafka, FAST_RETRY, OpError, sleep, runMain,
} = require('./sluice_kafkajs')

const USAGE = 'usage: node sluice_kafkajs_txn.js <kafkajs-module> ' +
  '(txn-produce | txn-offsets | txn-fence) <bootstrap> [--opt value]...'

function need(opts, name) {
  if (!opts[name]) throw new Error('--' + name + ' is required')
  return opts[name]
}

function pad3(i) {
  return String(i).padStart(3, '0')
}

function txnProducer(kafka, txnId) {
  return kafka.producer({ transactionalId: txnId, idempotent: true, maxInFlightRequests: 1 })
}

/** Emits an ack per record of one send: `sent` is [{topic, partition, value}] in send order. */
function emitAcks(step, kind, sent, results) {
  const base = {}
  for (const r of results) {
    if (r.errorCode) throw new Error('send result with errorCode ' + r.errorCode + ': ' + JSON.stringify(r))
    base[r.topicName + '/' + r.partition] = Number(r.baseOffset)
  }
  const next = {}
  for (const m of sent) {
    const k = m.topic + '/' + m.partition
    if (base[k] === undefined) throw new Error('no send result for ' + k + ': ' + JSON.stringify(results))
    next[k] = next[k] || 0
    out({ event: 'ack', step, kind, topic: m.topic, p: m.partition, o: base[k] + next[k]++, v: m.value })
  }
}

// --------------------------------------------------------------- txn-produce

async function txnProduce(kafka, version, opts) {
  const txnId = need(opts, 'txn-id')
  const topics = need(opts, 'topics').split(',').map(s => {
    const [topic, n] = s.split(':')
    return { topic, partitions: Number(n) }
  })
  const plan = need(opts, 'plan').split(',')
  const producer = txnProducer(kafka, txnId)
  let plain = null
  const t0 = Date.now()
  await producer.connect()
  for (let step = 0; step < plan.length; step++) {
    const kind = plan[step][0]
    const rounds = Number(plan[step].slice(1))
    const tag = kind + step
    const records = r => topics.map(({ topic, partitions }) => ({
      topic,
      messages: Array.from({ length: partitions }, (_, p) => ({
        partition: p,
        value: tag + '|' + topic.slice(-4) + '-' + p + '|' + pad3(r),
      })),
    }))
    const ts = Date.now()
    if (kind === 'P') {
      if (!plain) {
        plain = kafka.producer()
        await plain.connect()
      }
      for (let r = 0; r < rounds; r++) {
        const topicMessages = records(r)
        const res = await plain.sendBatch({ topicMessages })
        emitAcks(step, kind, flat(topicMessages), res)
      }
      out({ event: 'step', step, kind, outcome: 'plain', ms: Date.now() - ts })
      continue
    }
    if (kind !== 'C' && kind !== 'A') throw new Error('bad plan step ' + plan[step])
    let txn
    try {
      txn = await producer.transaction()
    } catch (e) {
      throw new OpError(e, { op: 'transaction', step })
    }
    for (let r = 0, chunk = 0; r < rounds; r += 2, chunk++) {
      // Two rounds at a time, so each partition gets batches of two records.
      const topicMessages = records(r)
      if (r + 1 < rounds) {
        records(r + 1).forEach((tm, i) => topicMessages[i].messages.push(...tm.messages))
      }
      try {
        if (chunk % 2 === 0) {
          for (const tm of topicMessages) {
            emitAcks(step, kind, flat([tm]), await txn.send({ topic: tm.topic, messages: tm.messages }))
          }
        } else {
          emitAcks(step, kind, flat(topicMessages), await txn.sendBatch({ topicMessages }))
        }
      } catch (e) {
        throw new OpError(e, { op: 'send', step, round: r })
      }
    }
    try {
      await (kind === 'C' ? txn.commit() : txn.abort())
    } catch (e) {
      throw new OpError(e, { op: kind === 'C' ? 'commit' : 'abort', step })
    }
    out({ event: 'step', step, kind, outcome: kind === 'C' ? 'commit' : 'abort', ms: Date.now() - ts })
  }
  await producer.disconnect()
  if (plain) await plain.disconnect()
  out({ event: 'done', client: version, ms: Date.now() - t0 })
}

function flat(topicMessages) {
  const all = []
  for (const { topic, messages } of topicMessages) {
    for (const m of messages) all.push({ topic, partition: m.partition, value: m.value })
  }
  return all
}

// --------------------------------------------------------------- txn-offsets

async function groupOffsets(admin, groupId, topic) {
  const res = await admin.fetchOffsets({ groupId, topics: [topic] })
  const t = res.find(x => x.topic === topic)
  const offs = {}
  for (const p of (t ? t.partitions : [])) {
    offs[p.partition] = Number(p.offset) < 0 ? null : Number(p.offset)
  }
  return offs
}

async function txnOffsets(kafka, version, opts) {
  const txnId = need(opts, 'txn-id')
  const groupId = need(opts, 'group')
  const inTopic = need(opts, 'in')
  const outTopic = need(opts, 'out')
  const settleMs = intOpt(opts, 'settle-ms', 1500)
  const plan = need(opts, 'plan').split(',').map(s => {
    const [kind, offs] = s.split(':')
    if (kind !== 'C' && kind !== 'A') throw new Error('bad plan step ' + s)
    return { kind, offsets: offs.split('/').map(Number) }
  })
  const admin = kafka.admin({ retry: FAST_RETRY })
  await admin.connect()
  const producer = txnProducer(kafka, txnId)
  const t0 = Date.now()
  await producer.connect()
  for (let step = 0; step < plan.length; step++) {
    const { kind, offsets } = plan[step]
    const txn = await producer.transaction()
    const messages = offsets.map((_, p) => ({ partition: p, value: kind + step + '|out-' + p }))
    try {
      emitAcks(step, kind, flat([{ topic: outTopic, messages }]), await txn.send({ topic: outTopic, messages }))
      await txn.sendOffsets({
        consumerGroupId: groupId,
        topics: [{ topic: inTopic, partitions: offsets.map((o, p) => ({ partition: p, offset: String(o) })) }],
      })
    } catch (e) {
      throw new OpError(e, { op: 'send/sendOffsets', step })
    }
    out({ event: 'offsets', step, when: 'open', offsets: await groupOffsets(admin, groupId, inTopic) })
    try {
      await (kind === 'C' ? txn.commit() : txn.abort())
    } catch (e) {
      throw new OpError(e, { op: kind === 'C' ? 'commit' : 'abort', step })
    }
    const ended = Date.now()
    const target = JSON.stringify(Object.fromEntries(offsets.map((o, p) => [p, o])))
    const seen = []
    for (;;) {
      const now = await groupOffsets(admin, groupId, inTopic)
      const s = JSON.stringify(now)
      if (!seen.length || JSON.stringify(seen[seen.length - 1].offsets) !== s) {
        seen.push({ ms: Date.now() - ended, offsets: now })
      }
      if ((kind === 'C' && s === target) || Date.now() - ended > settleMs) break
      await sleep(100)
    }
    out({ event: 'offsets', step, when: 'end', outcome: kind === 'C' ? 'commit' : 'abort', seen })
  }
  await producer.disconnect()
  await admin.disconnect()
  out({ event: 'done', client: version, ms: Date.now() - t0 })
}

// ----------------------------------------------------------------- txn-fence

async function txnFence(kafka, version, bootstrap, moduleName, kjs, opts) {
  const txnId = need(opts, 'txn-id')
  const topic = need(opts, 'topic')
  const next = need(opts, 'next')
  if (!['commit', 'send', 'send-new'].includes(next)) throw new Error('bad --next ' + next)
  const t0 = Date.now()
  const send = async (txn, step, messages) => {
    emitAcks(step, 'F', flat([{ topic, messages }]), await txn.send({ topic, messages }))
  }

  const p1 = txnProducer(kafka, txnId)
  await p1.connect()
  const txn1 = await p1.transaction()
  await send(txn1, 0, [{ partition: 0, value: 'F0|p0|000' }, { partition: 0, value: 'F0|p0|001' }])

  // The second producer: another client, as another process would have.
  const kafka2 = makeKafka(kjs, bootstrap, 'sluice-compat-' + moduleName + '-2')
  const p2 = txnProducer(kafka2, txnId)
  await p2.connect()
  let ts = Date.now()
  let txn2
  try {
    txn2 = await p2.transaction() // InitProducerId: fences producer 1
  } catch (e) {
    throw new OpError(e, { op: 'producer 2 transaction()' })
  }
  out({ event: 'p2-began', ms: Date.now() - ts })

  ts = Date.now()
  let result
  try {
    if (next === 'commit') {
      await txn1.commit()
    } else {
      const partition = next === 'send' ? 0 : 1
      await send(txn1, 0, [{ partition, value: 'F0|p' + partition + '|late' }])
    }
    result = { ok: true }
  } catch (e) {
    result = { ok: false, error: describeError(e) }
  }
  out(Object.assign({ event: 'p1-result', op: next, ms: Date.now() - ts }, result))

  try {
    await send(txn2, 1, [{ partition: 0, value: 'F1|p0|000' }, { partition: 1, value: 'F1|p1|000' }])
    await txn2.commit()
  } catch (e) {
    throw new OpError(e, { op: 'producer 2 send/commit' })
  }
  out({ event: 'step', step: 1, kind: 'F', outcome: 'commit' })
  await Promise.all([p1.disconnect().catch(() => {}), p2.disconnect()])
  out({ event: 'done', client: version, ms: Date.now() - t0 })
}

// ---------------------------------------------------------------------- main

function main() {
  return runMain(USAGE, async ({ kafka, kjs, moduleName, mode, bootstrap, rest, opts }) => {
    if (rest.length) return false
    if (mode === 'txn-produce') {
      await txnProduce(kafka, kjs.version, opts)
    } else if (mode === 'txn-offsets') {
      await txnOffsets(kafka, kjs.version, opts)
    } else if (mode === 'txn-fence') {
      await txnFence(kafka, kjs.version, bootstrap, moduleName, kjs.mod, opts)
    } else {
      return false
    }
    return true
  })
}

process.on('unhandledRejection', e => fail(1, { op: 'unhandledRejection', error: describeError(e) }))
main()
