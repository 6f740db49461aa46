// Readiness check for the local Kafka broker started by scripts/services.sh.
//
// Usage: java -cp 'jars/*:DIR' KafkaCheck BOOTSTRAP TOPIC TIMEOUT_SECONDS
//
// Retries until TIMEOUT_SECONDS have passed. One attempt:
//   1. Admin: describe the cluster (2 s timeout), create TOPIC (1 partition, replication factor 1) unless it exists.
//   2. Transactional producer: send one record with a fresh token and commit.
//      (This also makes the broker create __transaction_state.)
//   3. Consumer (read_committed, group "specflow-services-check", manual
//      assignment): seek to the record's offset, poll until the token is read,
//      then commit the offset. (This makes the broker create __consumer_offsets.)
// Prints "ok ..." and exits 0 on success; prints the last error and exits 1 on timeout.

import java.time.Duration;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class KafkaCheck {
    private static final String CLIENT = "specflow-services-check";

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: KafkaCheck BOOTSTRAP TOPIC TIMEOUT_SECONDS");
            System.exit(2);
        }
        String bootstrap = args[0];
        String topic = args[1];
        long deadline = System.nanoTime() + Long.parseLong(args[2]) * 1_000_000_000L;
        long start = System.nanoTime();
        int attempt = 0;
        Throwable last = null;
        while (true) {
            attempt++;
            long remainingMs = (deadline - System.nanoTime()) / 1_000_000L;
            if (remainingMs <= 0) {
                break;
            }
            try {
                long offset = roundTrip(bootstrap, topic, Math.max(2_000L, remainingMs));
                System.out.printf("ok: produced and consumed one record on %s/%s-0 at offset %d "
                        + "(attempt %d, %.1f s)%n", bootstrap, topic, offset, attempt,
                        (System.nanoTime() - start) / 1e9);
                System.exit(0);
            } catch (Throwable t) {
                last = t instanceof ExecutionException && t.getCause() != null ? t.getCause() : t;
                System.err.printf("attempt %d failed: %s%n", attempt, last);
                if (deadline - System.nanoTime() <= 0) {
                    break;
                }
                Thread.sleep(500);
            }
        }
        System.err.println("kafka check timed out; last error: " + last);
        System.exit(1);
    }

    private static long roundTrip(String bootstrap, String topic, long budgetMs) throws Exception {
        int opTimeout = (int) Math.min(budgetMs, 15_000L);
        String token = UUID.randomUUID().toString();
        TopicPartition tp = new TopicPartition(topic, 0);

        Properties a = new Properties();
        a.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        a.put(AdminClientConfig.CLIENT_ID_CONFIG, CLIENT + "-admin");
        a.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, opTimeout);
        a.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, opTimeout);
        try (Admin admin = Admin.create(a)) {
            // Cheap probe with a short timeout first, so that attempts made
            // while the broker is still starting fail (and are retried) fast.
            admin.describeCluster(new DescribeClusterOptions().timeoutMs(2_000)).nodes().get();
            try {
                admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1))).all().get();
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw e;
                }
            }
        }

        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, CLIENT + "-producer");
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, CLIENT);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, opTimeout);
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, opTimeout);
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, opTimeout + 1_000);
        p.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        long offset;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            producer.initTransactions();
            producer.beginTransaction();
            RecordMetadata md = producer.send(new ProducerRecord<>(topic, 0, "check", token)).get();
            producer.commitTransaction();
            offset = md.offset();
        }

        Properties c = new Properties();
        c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        c.put(ConsumerConfig.CLIENT_ID_CONFIG, CLIENT + "-consumer");
        c.put(ConsumerConfig.GROUP_ID_CONFIG, CLIENT);
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        c.put(ConsumerConfig.REQUEST_TIMEOUT_MS_CONFIG, opTimeout);
        c.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, opTimeout);
        c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
            consumer.assign(Collections.singletonList(tp));
            consumer.seek(tp, offset);
            long until = System.nanoTime() + opTimeout * 1_000_000L;
            while (System.nanoTime() < until) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    if (token.equals(r.value())) {
                        consumer.commitSync(Map.of(tp, new OffsetAndMetadata(r.offset() + 1)),
                                Duration.ofMillis(opTimeout));
                        return r.offset();
                    }
                }
            }
        }
        throw new IllegalStateException("record with token " + token + " not consumed within "
                + opTimeout + " ms");
    }
}
