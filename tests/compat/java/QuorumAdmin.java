// The metadata quorum seen through the Java admin client (KIP-836: describeMetadataQuorum),
// before and after a topic is created (a metadata record the quorum commits).
// Usage: java -cp '<kafka-clients jars>/*' QuorumAdmin.java <bootstrap> <topic>
// Prints one line per observation: "<label> <value>"; exits non-zero on any failure.
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.QuorumInfo;

public class QuorumAdmin {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1];
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(p)) {
            QuorumInfo before = admin.describeMetadataQuorum().quorumInfo().get();
            print("before", before);
            admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get();
            print("after", admin.describeMetadataQuorum().quorumInfo().get());
        }
    }

    static void print(String label, QuorumInfo q) {
        System.out.println(label + " leader " + q.leaderId() + " epoch " + q.leaderEpoch() + " hw " + q.highWatermark()
                + " voters " + q.voters().size() + " observers " + q.observers().size());
        for (QuorumInfo.ReplicaState r : q.voters()) {
            System.out.println(label + "-voter " + r.replicaId() + " " + r.logEndOffset() + " "
                    + r.lastFetchTimestamp().isPresent() + " " + r.lastCaughtUpTimestamp().isPresent());
        }
    }
}
