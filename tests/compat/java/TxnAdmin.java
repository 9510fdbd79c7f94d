// Transactions seen through the Java admin client (KIP-664: listTransactions,
// describeTransactions, describeProducers) while one is open and after it commits.
// Usage: java -cp '<kafka-clients jars>/*' TxnAdmin.java <bootstrap> <topic> <transactional.id>
// Prints one line per observation: "<label> <value>"; exits non-zero on any failure.
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.ProducerState;
import org.apache.kafka.clients.admin.TransactionDescription;
import org.apache.kafka.clients.admin.TransactionListing;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;

public class TxnAdmin {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], txnId = args[2];
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("key.serializer", "org.apache.kafka.common.serialization.StringSerializer");
        p.put("value.serializer", "org.apache.kafka.common.serialization.StringSerializer");
        p.put("transactional.id", txnId);
        try (Admin admin = Admin.create(p); KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1))).all().get();
            producer.initTransactions();
            producer.beginTransaction();
            long offset = producer.send(new ProducerRecord<>(topic, 1, "k", "v")).get().offset();
            System.out.println("offset " + offset);
            for (TransactionListing l : admin.listTransactions().all().get()) {
                if (l.transactionalId().equals(txnId)) {
                    System.out.println("listed " + l.state() + " " + l.producerId());
                }
            }
            TransactionDescription d = admin.describeTransactions(List.of(txnId)).all().get().get(txnId);
            System.out.println("open " + d.state() + " " + d.producerId() + " " + d.producerEpoch() + " "
                    + d.topicPartitions() + " " + d.transactionStartTimeMs().isPresent());
            TopicPartition tp = new TopicPartition(topic, 1);
            for (ProducerState s : admin.describeProducers(List.of(tp)).all().get().get(tp).activeProducers()) {
                System.out.println("producer " + s.producerId() + " " + s.producerEpoch() + " " + s.lastSequence()
                        + " " + s.currentTransactionStartOffset().orElse(-1));
            }
            producer.commitTransaction();
            d = admin.describeTransactions(List.of(txnId)).all().get().get(txnId);
            System.out.println("after " + d.state() + " " + d.topicPartitions());
        }
    }
}
