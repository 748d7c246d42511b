// Command deletetopics deletes Kafka topics a test run created. scripts/stack-check.sh runs
// it when it stops: the local broker outlives every run and keeps every topic in its data
// directory, so each CI run used to leave its two topics behind.
//
//	go run ./test/tools/deletetopics -brokers 127.0.0.1:59092 TOPIC...
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"recsys/pkg/kafka"
)

func main() {
	brokers := flag.String("brokers", os.Getenv("KAFKA_BOOTSTRAP_SERVERS"), "comma-separated broker addresses")
	timeout := flag.Duration("timeout", 15*time.Second, "longest wait for the broker")
	flag.Parse()
	if *brokers == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: deletetopics -brokers HOST:PORT[,...] TOPIC...")
		os.Exit(2)
	}
	cfg := kafka.DefaultConfig()
	cfg.Brokers, cfg.RequestTimeout = strings.Split(*brokers, ","), *timeout
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := kafka.New(cfg).DeleteTopics(ctx, flag.Args()...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
