// A small command-line driver for the Apache Kafka Java client
// (org.apache.kafka:kafka-clients), used by tests/compat/test_java.py.
// Single file, no build tool: scripts/install-java-clients.sh compiles it
// against each installed kafka-clients version.
//
// Every mode prints one JSON object per line on stdout (logs go to stderr)
// and ends with a {"t":"summary",...} line.  Exit codes: 0 success,
// 2 usage, 3 some operations/records failed, 4 consumer got fewer records
// than expected, 5 the --deadline-ms watchdog fired, 1 unexpected exception.
//
//   produce <bootstrap> <topic> <count> [--start I] [--rate R] [--value-bytes N]
//           [--deadline-ms MS] [--prop k=v]...
//       KafkaProducer with only bootstrap.servers and String serializers (plus
//       any --prop), i.e. the client's defaults (since 3.0: acks=all,
//       enable.idempotence=true).  Record i has key "k<i>", value
//       "v<i>|" padded with 'x' to N bytes, header "i"="<i>".  --rate paces
//       sends at R records/s.  Prints {"t":"ack","i":..,"p":..,"o":..} or
//       {"t":"err","i":..,"error":..} per record, then flush()es and prints
//       the summary.
//
//   consume-group <bootstrap> <topic> <group> <expected> <timeout_ms>
//           [--linger-ms MS] [--deadline-ms MS] [--prop k=v]...
//       KafkaConsumer subscribe() with group.id, auto.offset.reset=earliest,
//       enable.auto.commit=false, commitSync() after every non-empty poll.
//       Prints {"t":"rec","p":..,"o":..,"k":..,"v":..,"h":..} per record;
//       after reaching <expected> (and holding an assignment) keeps polling
//       --linger-ms (default 1000) to catch extras.  The summary has the
//       committed and end offsets of the assigned partitions.
//
//   admin <bootstrap> <op> [args...] [+ <op> [args...]]... [--deadline-ms MS]
//           [--prop k=v]...
//       ops: create-topic <name> <partitions> [config=value...]
//            delete-topic <name> | list-topics | describe-topic <name>...
//            describe-cluster | describe-configs <topic>
//       Prints {"t":"op","op":..,"ok":true|false,...} per op (an op failure
//       does not stop the later ops) and exits 3 if any op failed.
//
//   txn-produce <bootstrap> <transactional_id> <topic:partitions[,topic:partitions]...>
//           <plan> [--deadline-ms MS] [--prop k=v]...
//       A transactional KafkaProducer: bootstrap.servers, String serializers
//       and transactional.id, nothing else (plus any --prop).  initTransactions(),
//       then one transaction per plan item ("C<n>" commit, "A<n>" abort,
//       comma-separated): n records to every partition of every topic, record
//       j of transaction i to topic t partition p has key "k<j>", value
//       "x<i>|<t>|<p>|<j>", header "txn"="<i>".  An aborted transaction is
//       flush()ed first, so its records are in the log.  Prints
//       {"t":"ack","txn":i,"topic":..,"p":..,"o":..,"v":..} or {"t":"err",...}
//       per record and {"t":"txn","i":..,"outcome":..,"ok":..,"error":..} per
//       transaction.
//
//   consume-assign <bootstrap> <topic[,topic]...> <expected> <timeout_ms>
//           [--linger-ms MS] [--deadline-ms MS] [--prop k=v]...
//       KafkaConsumer (no group) assign()ed every partition of the topics from
//       the beginning (isolation.level via --prop).  Prints
//       {"t":"rec","topic":..,"p":..,"o":..,"k":..,"v":..} per record and
//       {"t":"pos","positions":{"topic/p":offset}} whenever the positions
//       change.  Done once it has <expected> records and every position has
//       reached endOffsets() (at the consumer's isolation level: the last
//       stable offset for read_committed), then polls --linger-ms more
//       (default 1000).  The summary has positions and end offsets.
//
//   ctp <bootstrap> <in_topic> <out_topic> <group> <transactional_id> <expected>
//           [--abort-rounds 2,4] [--max-poll N] [--deadline-ms MS] [--prop k=v]...
//       Consume-transform-produce: a group consumer (group.id,
//       enable.auto.commit=false, isolation.level=read_committed,
//       auto.offset.reset=earliest, max.poll.records=N, default 10) and a
//       transactional producer (transactional.id only).  Per non-empty poll
//       ("round"): beginTransaction, send "out:<value>" (same key, same
//       partition) to <out_topic>, sendOffsetsToTransaction(last offset + 1
//       per partition, consumer.groupMetadata()), then abortTransaction (the
//       listed rounds; the consumer then seeks back to its committed offsets)
//       or commitTransaction.  An Admin client reads the group's committed
//       offsets before the end of each transaction ("before"), right after it
//       ("after") and, after a commit, until they show the sent offsets (at
//       most 10 s, "settled").  Prints {"t":"round",...} per round; done once
//       <expected> records went out in committed rounds.

import java.io.BufferedOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.CreateTopicsResult;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerGroupMetadata;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.clients.producer.RecordMetadata;

public final class SluiceJavaClient {

    private static final PrintStream OUT = new PrintStream(
            new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16), false,
            StandardCharsets.UTF_8);

    /** kafka-clients version on the classpath (AppInfoParser moved packages in 4.x, so read its resource). */
    static final String CLIENT_VERSION = clientVersion();

    static String clientVersion() {
        try (java.io.InputStream in = KafkaProducer.class.getResourceAsStream("/kafka/kafka-version.properties")) {
            Properties p = new Properties();
            if (in != null) {
                p.load(in);
            }
            return p.getProperty("version", "unknown");
        } catch (java.io.IOException e) {
            return "unknown";
        }
    }

    // ------------------------------------------------------------------ output

    static synchronized void emit(Map<String, Object> m) {
        OUT.println(json(m));
    }

    static synchronized void flushOut() {
        OUT.flush();
    }

    static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i + 1 < kv.length; i += 2) {
            m.put((String) kv[i], kv[i + 1]);
        }
        return m;
    }

    static String json(Object v) {
        StringBuilder sb = new StringBuilder();
        writeJson(sb, v);
        return sb.toString();
    }

    @SuppressWarnings("unchecked")
    static void writeJson(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long || v instanceof Short) {
            sb.append(v);
        } else if (v instanceof Number) {
            double d = ((Number) v).doubleValue();
            sb.append(Double.isFinite(d) ? Double.toString(d) : "null");
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<Object, Object> e : ((Map<Object, Object>) v).entrySet()) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                writeString(sb, String.valueOf(e.getKey()));
                sb.append(':');
                writeJson(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof Collection) {
            sb.append('[');
            boolean first = true;
            for (Object o : (Collection<Object>) v) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                writeJson(sb, o);
            }
            sb.append(']');
        } else {
            writeString(sb, v.toString());
        }
    }

    static void writeString(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }

    static Throwable unwrap(Throwable t) {
        while ((t instanceof ExecutionException || t instanceof java.util.concurrent.CompletionException)
                && t.getCause() != null) {
            t = t.getCause();
        }
        return t;
    }

    static String describe(Throwable t) {
        t = unwrap(t);
        String s = t.getClass().getName() + ": " + t.getMessage();
        if (t.getCause() != null && t.getCause() != t) {
            s += " (caused by " + t.getCause().getClass().getName() + ": " + t.getCause().getMessage() + ")";
        }
        return s;
    }

    // ------------------------------------------------------------------ args

    static final class Args {
        final List<String> positional = new ArrayList<>();
        final Properties props = new Properties();
        final Map<String, String> opts = new LinkedHashMap<>();

        Args(String[] argv, int from, Set<String> valueOpts) {
            for (int i = from; i < argv.length; i++) {
                String a = argv[i];
                if (a.equals("--prop")) {
                    String kv = need(argv, ++i, a);
                    int eq = kv.indexOf('=');
                    if (eq <= 0) {
                        throw new Usage("--prop wants key=value, got " + kv);
                    }
                    props.setProperty(kv.substring(0, eq), kv.substring(eq + 1));
                } else if (valueOpts.contains(a)) {
                    opts.put(a, need(argv, ++i, a));
                } else if (a.startsWith("--")) {
                    throw new Usage("unknown option " + a);
                } else {
                    positional.add(a);
                }
            }
        }

        static String need(String[] argv, int i, String opt) {
            if (i >= argv.length) {
                throw new Usage(opt + " needs a value");
            }
            return argv[i];
        }

        String pos(int i, String name) {
            if (i >= positional.size()) {
                throw new Usage("missing argument <" + name + ">");
            }
            return positional.get(i);
        }

        long num(String opt, long dflt) {
            String v = opts.get(opt);
            return v == null ? dflt : Long.parseLong(v);
        }
    }

    static final class Usage extends RuntimeException {
        Usage(String m) {
            super(m);
        }
    }

    /** Halts the JVM (after a summary line) if the mode runs past its deadline. */
    static void startWatchdog(long deadlineMs, Runnable onTimeout) {
        if (deadlineMs <= 0) {
            return;
        }
        Thread t = new Thread(() -> {
            try {
                Thread.sleep(deadlineMs);
            } catch (InterruptedException e) {
                return;
            }
            try {
                onTimeout.run();
            } finally {
                flushOut();
                System.err.println("SluiceJavaClient: deadline of " + deadlineMs + " ms exceeded");
                System.err.flush();
                Runtime.getRuntime().halt(5);
            }
        }, "deadline-watchdog");
        t.setDaemon(true);
        t.start();
    }

    // ------------------------------------------------------------------ produce

    static String valueFor(long i, int valueBytes) {
        StringBuilder sb = new StringBuilder(Math.max(valueBytes, 16));
        sb.append('v').append(i).append('|');
        while (sb.length() < valueBytes) {
            sb.append('x');
        }
        return sb.toString();
    }

    static int produce(String[] argv) throws Exception {
        Args a = new Args(argv, 1, new TreeSet<>(Arrays.asList("--start", "--rate", "--value-bytes", "--deadline-ms")));
        String bootstrap = a.pos(0, "bootstrap");
        String topic = a.pos(1, "topic");
        long count = Long.parseLong(a.pos(2, "count"));
        long start = a.num("--start", 0);
        double rate = Double.parseDouble(a.opts.getOrDefault("--rate", "0"));
        int valueBytes = (int) a.num("--value-bytes", 0);
        long deadlineMs = a.num("--deadline-ms", 0);

        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        p.putAll(a.props);

        final AtomicLong acked = new AtomicLong();
        // send() may both throw and complete the callback for one record, so
        // count distinct failed indices.
        final Set<Long> failedIdx = java.util.concurrent.ConcurrentHashMap.newKeySet();
        final AtomicLong sendThrew = new AtomicLong();
        final Map<String, Long> errorCounts = Collections.synchronizedMap(new TreeMap<>());
        final long t0 = System.nanoTime();
        final long[] attempted = {0};

        Runnable summary = () -> emit(obj("t", "summary", "mode", "produce",
                "client_version", CLIENT_VERSION,
                "attempted", attempted[0], "acked", acked.get(), "failed", (long) failedIdx.size(),
                "send_threw", sendThrew.get(), "errors", new TreeMap<>(errorCounts),
                "elapsed_ms", (System.nanoTime() - t0) / 1_000_000));
        startWatchdog(deadlineMs, () -> {
            emit(obj("t", "timeout", "mode", "produce", "deadline_ms", deadlineMs));
            summary.run();
        });

        emit(obj("t", "start", "mode", "produce", "client_version", CLIENT_VERSION,
                "topic", topic, "count", count, "start", start, "props", new TreeMap<>(a.props)));
        flushOut();

        KafkaProducer<String, String> producer = new KafkaProducer<>(p);
        try {
            for (long i = start; i < start + count; i++) {
                if (rate > 0) {
                    long due = t0 + (long) ((i - start) * 1e9 / rate);
                    long now;
                    while ((now = System.nanoTime()) < due) {
                        Thread.sleep(Math.max(1, (due - now) / 1_000_000));
                    }
                }
                final long idx = i;
                ProducerRecord<String, String> rec = new ProducerRecord<>(topic, "k" + i, valueFor(i, valueBytes));
                rec.headers().add("i", Long.toString(i).getBytes(StandardCharsets.UTF_8));
                attempted[0]++;
                try {
                    producer.send(rec, (md, ex) -> {
                        if (ex == null) {
                            long n = acked.incrementAndGet();
                            emit(obj("t", "ack", "i", idx, "p", md.partition(), "o", md.offset()));
                            if (n % 500 == 0) {
                                flushOut();
                            }
                        } else {
                            failedIdx.add(idx);
                            errorCounts.merge(unwrap(ex).getClass().getName(), 1L, Long::sum);
                            emit(obj("t", "err", "i", idx, "error", describe(ex)));
                        }
                    });
                } catch (Exception e) {
                    // send() itself throws for fatal producer states; count and go on
                    sendThrew.incrementAndGet();
                    failedIdx.add(idx);
                    errorCounts.merge("send:" + unwrap(e).getClass().getName(), 1L, Long::sum);
                    emit(obj("t", "err", "i", idx, "error", "send() threw " + describe(e)));
                }
            }
            producer.flush();
        } finally {
            producer.close(Duration.ofSeconds(15));
        }
        summary.run();
        flushOut();
        return (failedIdx.isEmpty() && acked.get() == count) ? 0 : 3;
    }

    // ------------------------------------------------------------------ consume-group

    static Map<String, Object> offsetsJson(Map<TopicPartition, ?> m) {
        Map<String, Object> out = new TreeMap<>();
        for (Map.Entry<TopicPartition, ?> e : m.entrySet()) {
            Object v = e.getValue();
            if (v instanceof OffsetAndMetadata) {
                v = ((OffsetAndMetadata) v).offset();
            }
            out.put(Integer.toString(e.getKey().partition()), v);
        }
        return out;
    }

    static int consumeGroup(String[] argv) throws Exception {
        Args a = new Args(argv, 1, new TreeSet<>(Arrays.asList("--linger-ms", "--deadline-ms")));
        String bootstrap = a.pos(0, "bootstrap");
        String topic = a.pos(1, "topic");
        String group = a.pos(2, "group");
        long expected = Long.parseLong(a.pos(3, "expected"));
        long timeoutMs = Long.parseLong(a.pos(4, "timeout_ms"));
        long lingerMs = a.num("--linger-ms", 1000);
        long deadlineMs = a.num("--deadline-ms", timeoutMs + 60_000);

        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("group.id", group);
        p.put("auto.offset.reset", "earliest");
        p.put("enable.auto.commit", "false");
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        p.putAll(a.props);

        final long t0 = System.nanoTime();
        final long[] count = {0};
        final long[] commits = {0};
        final List<String> commitErrors = new ArrayList<>();
        startWatchdog(deadlineMs, () -> {
            emit(obj("t", "timeout", "mode", "consume-group", "deadline_ms", deadlineMs));
            emit(obj("t", "summary", "mode", "consume-group", "client_version", CLIENT_VERSION,
                    "count", count[0], "expected", expected, "timed_out", true));
        });
        emit(obj("t", "start", "mode", "consume-group", "client_version", CLIENT_VERSION,
                "topic", topic, "group", group, "expected", expected));
        flushOut();

        Map<String, Object> summary = obj("t", "summary", "mode", "consume-group",
                "client_version", CLIENT_VERSION, "group", group);
        KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p);
        try {
            consumer.subscribe(Collections.singletonList(topic));
            long end = System.currentTimeMillis() + timeoutMs;
            long lingerUntil = -1;
            long firstRecordMs = -1;
            while (true) {
                long now = System.currentTimeMillis();
                if (now >= end || (lingerUntil >= 0 && now >= lingerUntil)) {
                    break;
                }
                ConsumerRecords<String, String> recs = consumer.poll(Duration.ofMillis(200));
                for (ConsumerRecord<String, String> r : recs) {
                    Header h = r.headers().lastHeader("i");
                    emit(obj("t", "rec", "p", r.partition(), "o", r.offset(), "k", r.key(), "v", r.value(),
                            "h", h == null || h.value() == null ? null : new String(h.value(), StandardCharsets.UTF_8),
                            "ts", r.timestamp()));
                    count[0]++;
                }
                if (!recs.isEmpty()) {
                    if (firstRecordMs < 0) {
                        firstRecordMs = (System.nanoTime() - t0) / 1_000_000;
                    }
                    try {
                        consumer.commitSync(Duration.ofSeconds(15));
                        commits[0]++;
                    } catch (Exception e) {
                        commitErrors.add(describe(e));
                        emit(obj("t", "commit-error", "error", describe(e)));
                    }
                }
                // Linger only once this member owns partitions, so expected=0
                // really checks that nothing is left past the committed offsets.
                if (lingerUntil < 0 && count[0] >= expected && !consumer.assignment().isEmpty()) {
                    lingerUntil = System.currentTimeMillis() + lingerMs;
                }
            }
            Set<TopicPartition> assignment = consumer.assignment();
            List<Integer> parts = new ArrayList<>();
            for (TopicPartition tp : assignment) {
                parts.add(tp.partition());
            }
            Collections.sort(parts);
            summary.put("assignment", parts);
            try {
                Map<TopicPartition, OffsetAndMetadata> committed = consumer.committed(assignment, Duration.ofSeconds(15));
                summary.put("committed", offsetsJson(committed));
            } catch (Exception e) {
                summary.put("committed_error", describe(e));
            }
            try {
                summary.put("end_offsets", offsetsJson(consumer.endOffsets(assignment, Duration.ofSeconds(15))));
            } catch (Exception e) {
                summary.put("end_offsets_error", describe(e));
            }
            summary.put("first_record_ms", firstRecordMs);
        } finally {
            try {
                consumer.close(Duration.ofSeconds(15));
            } catch (Exception e) {
                summary.put("close_error", describe(e));
            }
        }
        summary.put("count", count[0]);
        summary.put("expected", expected);
        summary.put("commits", commits[0]);
        summary.put("commit_errors", commitErrors);
        summary.put("elapsed_ms", (System.nanoTime() - t0) / 1_000_000);
        emit(summary);
        flushOut();
        if (count[0] < expected) {
            return 4;
        }
        return commitErrors.isEmpty() ? 0 : 3;
    }

    // ------------------------------------------------------------------ admin

    static Map<String, Object> nodeJson(Node n) {
        if (n == null) {
            return null;
        }
        return obj("id", n.id(), "host", n.host(), "port", n.port(), "rack", n.rack());
    }

    static List<Integer> nodeIds(List<Node> nodes) {
        List<Integer> out = new ArrayList<>();
        for (Node n : nodes) {
            out.add(n.id());
        }
        return out;
    }

    static Map<String, Object> runOp(Admin admin, List<String> op) throws Exception {
        String name = op.get(0);
        List<String> args = op.subList(1, op.size());
        Map<String, Object> out = obj("t", "op", "op", name, "args", args, "ok", true);
        switch (name) {
            case "create-topic": {
                if (args.size() < 2) {
                    throw new Usage("create-topic <name> <partitions> [config=value...]");
                }
                Map<String, String> configs = new TreeMap<>();
                for (String kv : args.subList(2, args.size())) {
                    int eq = kv.indexOf('=');
                    configs.put(kv.substring(0, eq), kv.substring(eq + 1));
                }
                NewTopic nt = new NewTopic(args.get(0), Integer.parseInt(args.get(1)), (short) 1).configs(configs);
                CreateTopicsResult r = admin.createTopics(Collections.singleton(nt));
                r.all().get(30, TimeUnit.SECONDS);
                try {
                    out.put("num_partitions", r.numPartitions(args.get(0)).get(5, TimeUnit.SECONDS));
                    out.put("replication_factor", r.replicationFactor(args.get(0)).get(5, TimeUnit.SECONDS));
                } catch (Exception e) {
                    out.put("result_details_error", describe(e));
                }
                break;
            }
            case "delete-topic": {
                admin.deleteTopics(args).all().get(30, TimeUnit.SECONDS);
                break;
            }
            case "list-topics": {
                out.put("topics", new TreeSet<>(admin.listTopics().names().get(30, TimeUnit.SECONDS)));
                break;
            }
            case "describe-topic": {
                Map<String, TopicDescription> d = admin.describeTopics(args).allTopicNames().get(30, TimeUnit.SECONDS);
                Map<String, Object> topics = new TreeMap<>();
                for (TopicDescription td : d.values()) {
                    List<Object> parts = new ArrayList<>();
                    for (TopicPartitionInfo pi : td.partitions()) {
                        parts.add(obj("partition", pi.partition(), "leader", nodeJson(pi.leader()),
                                "replicas", nodeIds(pi.replicas()), "isr", nodeIds(pi.isr())));
                    }
                    topics.put(td.name(), obj("name", td.name(), "internal", td.isInternal(),
                            "topic_id", td.topicId() == null ? null : td.topicId().toString(), "partitions", parts));
                }
                out.put("topics", topics);
                break;
            }
            case "describe-cluster": {
                DescribeClusterResult r = admin.describeCluster();
                List<Object> nodes = new ArrayList<>();
                for (Node n : r.nodes().get(30, TimeUnit.SECONDS)) {
                    nodes.add(nodeJson(n));
                }
                out.put("cluster_id", r.clusterId().get(30, TimeUnit.SECONDS));
                out.put("controller", nodeJson(r.controller().get(30, TimeUnit.SECONDS)));
                out.put("nodes", nodes);
                break;
            }
            case "describe-configs": {
                List<ConfigResource> res = new ArrayList<>();
                for (String t : args) {
                    res.add(new ConfigResource(ConfigResource.Type.TOPIC, t));
                }
                Map<ConfigResource, Config> cfgs = admin.describeConfigs(res).all().get(30, TimeUnit.SECONDS);
                Map<String, Object> topics = new TreeMap<>();
                for (Map.Entry<ConfigResource, Config> e : cfgs.entrySet()) {
                    Map<String, Object> entries = new TreeMap<>();
                    for (ConfigEntry ce : e.getValue().entries()) {
                        entries.put(ce.name(), obj("value", ce.value(), "source", String.valueOf(ce.source()),
                                "read_only", ce.isReadOnly()));
                    }
                    topics.put(e.getKey().name(), entries);
                }
                out.put("configs", topics);
                break;
            }
            case "alter-config": {
                // alter-config <topic> key=value (SET) | key= (DELETE) ..., one incremental change
                if (args.size() < 2) {
                    throw new Usage("alter-config <topic> key=value...");
                }
                List<AlterConfigOp> ops = new ArrayList<>();
                for (String kv : args.subList(1, args.size())) {
                    int eq = kv.indexOf('=');
                    String key = kv.substring(0, eq);
                    String value = kv.substring(eq + 1);
                    ops.add(value.isEmpty()
                            ? new AlterConfigOp(new ConfigEntry(key, null), AlterConfigOp.OpType.DELETE)
                            : new AlterConfigOp(new ConfigEntry(key, value), AlterConfigOp.OpType.SET));
                }
                ConfigResource r = new ConfigResource(ConfigResource.Type.TOPIC, args.get(0));
                admin.incrementalAlterConfigs(Collections.singletonMap(r, ops)).all().get(30, TimeUnit.SECONDS);
                break;
            }
            default:
                throw new Usage("unknown admin op " + name);
        }
        return out;
    }

    static int admin(String[] argv) throws Exception {
        Args a = new Args(argv, 1, new TreeSet<>(Arrays.asList("--deadline-ms")));
        String bootstrap = a.pos(0, "bootstrap");
        long deadlineMs = a.num("--deadline-ms", 120_000);
        List<List<String>> ops = new ArrayList<>();
        List<String> cur = new ArrayList<>();
        for (String s : a.positional.subList(1, a.positional.size())) {
            if (s.equals("+")) {
                if (!cur.isEmpty()) {
                    ops.add(cur);
                }
                cur = new ArrayList<>();
            } else {
                cur.add(s);
            }
        }
        if (!cur.isEmpty()) {
            ops.add(cur);
        }
        if (ops.isEmpty()) {
            throw new Usage("admin needs at least one op");
        }
        startWatchdog(deadlineMs, () -> emit(obj("t", "summary", "mode", "admin", "timed_out", true)));

        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("request.timeout.ms", "15000");
        p.put("default.api.timeout.ms", "30000");
        p.putAll(a.props);
        int failures = 0;
        try (Admin admin = Admin.create(p)) {
            for (List<String> op : ops) {
                Map<String, Object> r;
                try {
                    r = runOp(admin, op);
                } catch (Usage u) {
                    throw u;
                } catch (Exception e) {
                    failures++;
                    Throwable c = unwrap(e);
                    r = obj("t", "op", "op", op.get(0), "args", op.subList(1, op.size()), "ok", false,
                            "error_class", c.getClass().getName(), "error", describe(e));
                }
                emit(r);
                flushOut();
            }
        }
        emit(obj("t", "summary", "mode", "admin", "client_version", CLIENT_VERSION,
                "ops", ops.size(), "failed", failures));
        flushOut();
        return failures == 0 ? 0 : 3;
    }

    // ------------------------------------------------------------------ transactions

    static List<TopicPartition> partitionsOf(String spec) {
        List<TopicPartition> out = new ArrayList<>();
        for (String tp : spec.split(",")) {
            int c = tp.lastIndexOf(':');
            if (c <= 0) {
                throw new Usage("topic spec wants topic:partitions, got " + tp);
            }
            int n = Integer.parseInt(tp.substring(c + 1));
            for (int p = 0; p < n; p++) {
                out.add(new TopicPartition(tp.substring(0, c), p));
            }
        }
        return out;
    }

    static int txnProduce(String[] argv) throws Exception {
        Args a = new Args(argv, 1, new TreeSet<>(Arrays.asList("--deadline-ms")));
        String bootstrap = a.pos(0, "bootstrap");
        String txnId = a.pos(1, "transactional_id");
        List<TopicPartition> tps = partitionsOf(a.pos(2, "topic:partitions"));
        String[] plan = a.pos(3, "plan").split(",");
        long deadlineMs = a.num("--deadline-ms", 120_000);

        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        p.put("transactional.id", txnId);
        p.putAll(a.props);

        final AtomicLong acked = new AtomicLong();
        final AtomicLong failed = new AtomicLong();
        final long t0 = System.nanoTime();
        final int[] txnsOk = {0};
        final List<String> txnErrors = Collections.synchronizedList(new ArrayList<>());
        Runnable summary = () -> emit(obj("t", "summary", "mode", "txn-produce", "client_version", CLIENT_VERSION,
                "transactional_id", txnId, "transactions", plan.length, "transactions_ok", txnsOk[0],
                "acked", acked.get(), "failed", failed.get(), "txn_errors", new ArrayList<>(txnErrors),
                "elapsed_ms", (System.nanoTime() - t0) / 1_000_000));
        startWatchdog(deadlineMs, () -> {
            emit(obj("t", "timeout", "mode", "txn-produce", "deadline_ms", deadlineMs));
            summary.run();
        });
        emit(obj("t", "start", "mode", "txn-produce", "client_version", CLIENT_VERSION,
                "transactional_id", txnId, "plan", Arrays.asList(plan)));
        flushOut();

        KafkaProducer<String, String> producer = new KafkaProducer<>(p);
        boolean fatal = false;
        try {
            producer.initTransactions();
            emit(obj("t", "init", "ok", true));
            for (int i = 0; i < plan.length && !fatal; i++) {
                String item = plan[i].trim();
                boolean commit = item.startsWith("C");
                if (!commit && !item.startsWith("A")) {
                    throw new Usage("plan items are C<n> or A<n>, got " + item);
                }
                int n = Integer.parseInt(item.substring(1));
                final int txn = i;
                String outcome = commit ? "commit" : "abort";
                try {
                    producer.beginTransaction();
                    for (int j = 0; j < n; j++) {
                        for (TopicPartition tp : tps) {
                            final String v = "x" + txn + "|" + tp.topic() + "|" + tp.partition() + "|" + j;
                            ProducerRecord<String, String> rec =
                                    new ProducerRecord<>(tp.topic(), tp.partition(), "k" + j, v);
                            rec.headers().add("txn", Integer.toString(txn).getBytes(StandardCharsets.UTF_8));
                            producer.send(rec, (RecordMetadata md, Exception ex) -> {
                                if (ex == null) {
                                    acked.incrementAndGet();
                                    emit(obj("t", "ack", "txn", txn, "topic", md.topic(), "p", md.partition(),
                                            "o", md.offset(), "v", v));
                                } else {
                                    failed.incrementAndGet();
                                    emit(obj("t", "err", "txn", txn, "v", v, "error", describe(ex)));
                                }
                            });
                        }
                    }
                    if (commit) {
                        producer.commitTransaction();
                    } else {
                        producer.flush();
                        producer.abortTransaction();
                    }
                    txnsOk[0]++;
                    emit(obj("t", "txn", "i", txn, "outcome", outcome, "ok", true));
                } catch (Exception e) {
                    Throwable c = unwrap(e);
                    txnErrors.add(describe(e));
                    emit(obj("t", "txn", "i", txn, "outcome", outcome, "ok", false,
                            "error_class", c.getClass().getName(), "error", describe(e)));
                    // As the producer's documentation prescribes: fencing and
                    // authorization errors are fatal, anything else is aborted.
                    String cn = c.getClass().getSimpleName();
                    if (cn.equals("ProducerFencedException") || cn.equals("OutOfOrderSequenceException")
                            || cn.equals("AuthorizationException") || cn.equals("UnsupportedVersionException")) {
                        fatal = true;
                    } else {
                        try {
                            producer.abortTransaction();
                        } catch (Exception e2) {
                            txnErrors.add("abort after error: " + describe(e2));
                            fatal = true;
                        }
                    }
                }
                flushOut();
            }
        } finally {
            producer.close(Duration.ofSeconds(15));
        }
        summary.run();
        flushOut();
        return (txnErrors.isEmpty() && failed.get() == 0 && txnsOk[0] == plan.length) ? 0 : 3;
    }

    static Map<String, Object> positionsJson(Map<TopicPartition, Long> m) {
        Map<String, Object> out = new TreeMap<>();
        for (Map.Entry<TopicPartition, Long> e : m.entrySet()) {
            out.put(e.getKey().topic() + "/" + e.getKey().partition(), e.getValue());
        }
        return out;
    }

    static int consumeAssign(String[] argv) throws Exception {
        Args a = new Args(argv, 1, new TreeSet<>(Arrays.asList("--linger-ms", "--deadline-ms")));
        String bootstrap = a.pos(0, "bootstrap");
        List<String> topics = Arrays.asList(a.pos(1, "topics").split(","));
        long expected = Long.parseLong(a.pos(2, "expected"));
        long timeoutMs = Long.parseLong(a.pos(3, "timeout_ms"));
        long lingerMs = a.num("--linger-ms", 1000);
        long deadlineMs = a.num("--deadline-ms", timeoutMs + 60_000);

        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("enable.auto.commit", "false");
        p.put("key.deserializer", StringDeserializer.class.getName());
        p.put("value.deserializer", StringDeserializer.class.getName());
        p.putAll(a.props);

        final long t0 = System.nanoTime();
        final long[] count = {0};
        startWatchdog(deadlineMs, () -> {
            emit(obj("t", "timeout", "mode", "consume-assign", "deadline_ms", deadlineMs));
            emit(obj("t", "summary", "mode", "consume-assign", "client_version", CLIENT_VERSION,
                    "count", count[0], "expected", expected, "timed_out", true));
        });
        emit(obj("t", "start", "mode", "consume-assign", "client_version", CLIENT_VERSION, "topics", topics,
                "expected", expected, "isolation_level", p.getProperty("isolation.level", "default")));
        flushOut();

        Map<String, Object> summary = obj("t", "summary", "mode", "consume-assign", "client_version", CLIENT_VERSION,
                "isolation_level", p.getProperty("isolation.level", "default"));
        KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p);
        try {
            List<TopicPartition> tps = new ArrayList<>();
            for (String t : topics) {
                for (PartitionInfo pi : consumer.partitionsFor(t, Duration.ofSeconds(30))) {
                    tps.add(new TopicPartition(t, pi.partition()));
                }
            }
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            long end = System.currentTimeMillis() + timeoutMs;
            long lingerUntil = -1;
            Map<TopicPartition, Long> lastPos = new java.util.HashMap<>();
            Map<TopicPartition, Long> ends = Collections.emptyMap();
            long nextEnds = 0;
            while (true) {
                long now = System.currentTimeMillis();
                if (now >= end || (lingerUntil >= 0 && now >= lingerUntil)) {
                    break;
                }
                ConsumerRecords<String, String> recs = consumer.poll(Duration.ofMillis(200));
                for (ConsumerRecord<String, String> r : recs) {
                    emit(obj("t", "rec", "topic", r.topic(), "p", r.partition(), "o", r.offset(), "k", r.key(),
                            "v", r.value()));
                    count[0]++;
                }
                Map<TopicPartition, Long> pos = new java.util.HashMap<>();
                for (TopicPartition tp : tps) {
                    pos.put(tp, consumer.position(tp, Duration.ofSeconds(15)));
                }
                if (!pos.equals(lastPos)) {
                    emit(obj("t", "pos", "positions", positionsJson(pos)));
                    flushOut();
                    lastPos = pos;
                }
                if (lingerUntil < 0 && count[0] >= expected) {
                    if (System.currentTimeMillis() >= nextEnds) {
                        ends = consumer.endOffsets(tps, Duration.ofSeconds(15));
                        nextEnds = System.currentTimeMillis() + 500;
                    }
                    boolean atEnd = true;
                    for (TopicPartition tp : tps) {
                        atEnd &= pos.get(tp) >= ends.getOrDefault(tp, Long.MAX_VALUE);
                    }
                    if (atEnd) {
                        lingerUntil = System.currentTimeMillis() + lingerMs;
                    }
                }
            }
            Map<TopicPartition, Long> pos = new java.util.HashMap<>();
            for (TopicPartition tp : tps) {
                pos.put(tp, consumer.position(tp, Duration.ofSeconds(15)));
            }
            summary.put("positions", positionsJson(pos));
            summary.put("end_offsets", positionsJson(consumer.endOffsets(tps, Duration.ofSeconds(15))));
            summary.put("reached_end", lingerUntil >= 0);
        } finally {
            try {
                consumer.close(Duration.ofSeconds(15));
            } catch (Exception e) {
                summary.put("close_error", describe(e));
            }
        }
        summary.put("count", count[0]);
        summary.put("expected", expected);
        summary.put("elapsed_ms", (System.nanoTime() - t0) / 1_000_000);
        emit(summary);
        flushOut();
        return count[0] < expected || !Boolean.TRUE.equals(summary.get("reached_end")) ? 4 : 0;
    }

    static Map<String, Object> groupOffsets(Admin admin, String group, String topic) throws Exception {
        Map<TopicPartition, OffsetAndMetadata> m =
                admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
        Map<TopicPartition, Object> mine = new java.util.HashMap<>();
        for (Map.Entry<TopicPartition, OffsetAndMetadata> e : m.entrySet()) {
            if (e.getKey().topic().equals(topic) && e.getValue() != null) {
                mine.put(e.getKey(), e.getValue());
            }
        }
        return offsetsJson(mine);
    }

    static int ctp(String[] argv) throws Exception {
        Args a = new Args(argv, 1, new TreeSet<>(Arrays.asList("--abort-rounds", "--max-poll", "--deadline-ms")));
        String bootstrap = a.pos(0, "bootstrap");
        String in = a.pos(1, "in_topic");
        String out = a.pos(2, "out_topic");
        String group = a.pos(3, "group");
        String txnId = a.pos(4, "transactional_id");
        long expected = Long.parseLong(a.pos(5, "expected"));
        Set<Integer> abortRounds = new TreeSet<>();
        for (String r : a.opts.getOrDefault("--abort-rounds", "").split(",")) {
            if (!r.isEmpty()) {
                abortRounds.add(Integer.parseInt(r));
            }
        }
        long deadlineMs = a.num("--deadline-ms", 120_000);

        Properties cp = new Properties();
        cp.put("bootstrap.servers", bootstrap);
        cp.put("group.id", group);
        cp.put("enable.auto.commit", "false");
        cp.put("isolation.level", "read_committed");
        cp.put("auto.offset.reset", "earliest");
        cp.put("max.poll.records", Long.toString(a.num("--max-poll", 10)));
        cp.put("key.deserializer", StringDeserializer.class.getName());
        cp.put("value.deserializer", StringDeserializer.class.getName());
        Properties pp = new Properties();
        pp.put("bootstrap.servers", bootstrap);
        pp.put("transactional.id", txnId);
        pp.put("key.serializer", StringSerializer.class.getName());
        pp.put("value.serializer", StringSerializer.class.getName());
        Properties ap = new Properties();
        ap.put("bootstrap.servers", bootstrap);
        ap.put("request.timeout.ms", "15000");
        ap.put("default.api.timeout.ms", "30000");

        final long t0 = System.nanoTime();
        final long[] done = {0};
        final int[] rounds = {0};
        startWatchdog(deadlineMs, () -> {
            emit(obj("t", "timeout", "mode", "ctp", "deadline_ms", deadlineMs));
            emit(obj("t", "summary", "mode", "ctp", "client_version", CLIENT_VERSION, "done", done[0],
                    "expected", expected, "rounds", rounds[0], "timed_out", true));
        });
        emit(obj("t", "start", "mode", "ctp", "client_version", CLIENT_VERSION, "in", in, "out", out,
                "group", group, "transactional_id", txnId, "abort_rounds", abortRounds));
        flushOut();

        Map<String, Object> summary = obj("t", "summary", "mode", "ctp", "client_version", CLIENT_VERSION);
        List<String> errors = new ArrayList<>();
        KafkaConsumer<String, String> consumer = new KafkaConsumer<>(cp);
        KafkaProducer<String, String> producer = new KafkaProducer<>(pp);
        Admin admin = Admin.create(ap);
        try {
            producer.initTransactions();
            consumer.subscribe(Collections.singletonList(in));
            while (done[0] < expected) {
                ConsumerRecords<String, String> recs = consumer.poll(Duration.ofMillis(200));
                if (recs.isEmpty()) {
                    continue;
                }
                int round = ++rounds[0];
                boolean abort = abortRounds.contains(round);
                Map<TopicPartition, OffsetAndMetadata> offsets = new java.util.HashMap<>();
                Map<String, Object> roundOut = obj("t", "round", "i", round, "outcome", abort ? "abort" : "commit",
                        "n", recs.count());
                try {
                    producer.beginTransaction();
                    for (TopicPartition tp : recs.partitions()) {
                        List<ConsumerRecord<String, String>> l = recs.records(tp);
                        for (ConsumerRecord<String, String> r : l) {
                            producer.send(new ProducerRecord<>(out, r.partition(), r.key(), "out:" + r.value()));
                        }
                        offsets.put(tp, new OffsetAndMetadata(l.get(l.size() - 1).offset() + 1));
                    }
                    ConsumerGroupMetadata gm = consumer.groupMetadata();
                    producer.sendOffsetsToTransaction(offsets, gm);
                    producer.flush();
                    roundOut.put("sent_offsets", offsetsJson(offsets));
                    roundOut.put("generation", gm.generationId());
                    roundOut.put("before", groupOffsets(admin, group, in));
                    if (abort) {
                        producer.abortTransaction();
                        roundOut.put("after", groupOffsets(admin, group, in));
                        Set<TopicPartition> assigned = consumer.assignment();
                        Map<TopicPartition, OffsetAndMetadata> committed = consumer.committed(assigned);
                        for (TopicPartition tp : assigned) {
                            OffsetAndMetadata c = committed.get(tp);
                            if (c != null) {
                                consumer.seek(tp, c.offset());
                            } else {
                                consumer.seekToBeginning(Collections.singleton(tp));
                            }
                        }
                    } else {
                        producer.commitTransaction();
                        roundOut.put("after", groupOffsets(admin, group, in));
                        long until = System.currentTimeMillis() + 10_000;
                        Map<String, Object> settled = groupOffsets(admin, group, in);
                        while (System.currentTimeMillis() < until) {
                            boolean all = true;
                            for (Map.Entry<TopicPartition, OffsetAndMetadata> e : offsets.entrySet()) {
                                all &= Long.valueOf(e.getValue().offset())
                                        .equals(settled.get(Integer.toString(e.getKey().partition())));
                            }
                            if (all) {
                                break;
                            }
                            Thread.sleep(100);
                            settled = groupOffsets(admin, group, in);
                        }
                        roundOut.put("settled", settled);
                        done[0] += recs.count();
                    }
                } catch (Exception e) {
                    errors.add(describe(e));
                    roundOut.put("error", describe(e));
                    roundOut.put("error_class", unwrap(e).getClass().getName());
                    emit(roundOut);
                    flushOut();
                    break;
                }
                emit(roundOut);
                flushOut();
            }
            summary.put("final_committed", groupOffsets(admin, group, in));
        } finally {
            try {
                producer.close(Duration.ofSeconds(15));
                consumer.close(Duration.ofSeconds(15));
                admin.close(Duration.ofSeconds(15));
            } catch (Exception e) {
                summary.put("close_error", describe(e));
            }
        }
        summary.put("done", done[0]);
        summary.put("expected", expected);
        summary.put("rounds", rounds[0]);
        summary.put("errors", errors);
        summary.put("elapsed_ms", (System.nanoTime() - t0) / 1_000_000);
        emit(summary);
        flushOut();
        return errors.isEmpty() && done[0] >= expected ? 0 : 3;
    }

    // ------------------------------------------------------------------ main

    public static void main(String[] argv) {
        int rc;
        try {
            if (argv.length == 0) {
                throw new Usage("no mode");
            }
            switch (argv[0]) {
                case "produce": rc = produce(argv); break;
                case "consume-group": rc = consumeGroup(argv); break;
                case "admin": rc = admin(argv); break;
                case "txn-produce": rc = txnProduce(argv); break;
                case "consume-assign": rc = consumeAssign(argv); break;
                case "ctp": rc = ctp(argv); break;
                case "version":
                    emit(obj("t", "summary", "mode", "version", "client_version", CLIENT_VERSION));
                    rc = 0;
                    break;
                default: throw new Usage("unknown mode " + argv[0]);
            }
        } catch (Usage u) {
            System.err.println("usage error: " + u.getMessage());
            System.err.println("modes: produce <bootstrap> <topic> <count> | "
                    + "consume-group <bootstrap> <topic> <group> <expected> <timeout_ms> | "
                    + "admin <bootstrap> <op> [args] [+ <op> [args]]... | "
                    + "txn-produce <bootstrap> <transactional_id> <topic:partitions,...> <plan> | "
                    + "consume-assign <bootstrap> <topics> <expected> <timeout_ms> | "
                    + "ctp <bootstrap> <in> <out> <group> <transactional_id> <expected> | version");
            rc = 2;
        } catch (Throwable t) {
            emit(obj("t", "fatal", "error", describe(t)));
            t.printStackTrace();
            rc = 1;
        }
        flushOut();
        System.err.flush();
        // Client threads are closed above; exit explicitly so a stuck
        // non-daemon thread can never keep the JVM alive.
        Runtime.getRuntime().halt(rc);
    }
}
