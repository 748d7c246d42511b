package relay

import (
	"recsys/pkg/kafka"
)

// NewPublisher returns the relay's Kafka publisher: a kafka.Producer sending each call as one
// produce request per broker (all its topics and partitions), partition batches bounded by
// --relay.max-batch-bytes.
func NewPublisher(c *kafka.Client, cfg *Config) Publisher {
	return c.NewProducer(kafka.ProducerOptions{MaxBytes: cfg.MaxBatchBytes})
}
