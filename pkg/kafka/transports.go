package kafka

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// leaderMoved reports a partition error meaning the broker asked no longer leads the
// partition, or that its leader is being elected.
func leaderMoved(err error) bool {
	return errors.Is(err, kafkago.NotLeaderForPartition) || errors.Is(err, kafkago.LeaderNotAvailable) ||
		errors.Is(err, kafkago.FencedLeaderEpoch) || errors.Is(err, kafkago.UnknownLeaderEpoch)
}

// unreachable reports a request the broker its transport routed it to did not answer (a
// refused or broken connection, a timeout) or that the transport could not route (its
// metadata names no such broker, or it never got any). A crashed broker's partitions get
// other leaders on a cluster of several, and a transport that never reached the cluster
// keeps that error: either way the transport's metadata is what may be wrong, and it
// refreshes it only on its timer (within its metadata TTL).
//
// A failed TLS handshake counts too: a transport reads the TLS files once, when it is made,
// so after the broker's certificate moved to a new CA, or while a rotation had the files
// unreadable, it failed every connection until the process restarted. A new transport reads
// them again. (A broker refusing the client's certificate is a remote alert, a net.Error.)
func unreachable(err error) bool {
	if errors.Is(err, kafkago.BrokerNotAvailable) {
		return true
	}
	var verr *tls.CertificateVerificationError
	var ferr tlsFilesError
	if errors.As(err, &verr) || errors.As(err, &ferr) {
		return true
	}
	// A broker's answer: kafkago.Error has the methods of a net.Error.
	var kerr kafkago.Error
	if errors.As(err, &kerr) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// renewEvery bounds how often a client replaces its transport: a partition whose election
// lasts a few seconds fails every attempt meanwhile, and each new transport costs a
// connection (TLS and SASL included) per broker.
const renewEvery = time.Second

// transports holds a client's kafka-go transport and replaces it when a leader moved or a
// broker could not be reached.
//
// A kafka-go Transport routes each request by its cached topic metadata, which it refreshes
// only on a timer (a random moment within its metadata TTL; topic creation aside): after a
// leader moved (a broker restarted, a preferred leader elected again), it sends the
// partition's requests to the old leader, refused with NotLeaderForPartition, for up to the
// TTL (10 s here). A new transport reads the metadata first. The old one is closed once its
// last request is done.
type transports struct {
	newRT func() kafkago.RoundTripper

	mu      sync.Mutex
	cur     *transportRef
	renewed time.Time
}

// transportRef is one transport and the requests in flight on it.
type transportRef struct {
	rt    kafkago.RoundTripper
	users sync.WaitGroup
}

func newTransports(newRT func() kafkago.RoundTripper) *transports {
	return &transports{newRT: newRT, cur: &transportRef{rt: newRT()}}
}

// acquire returns the current transport; the caller releases it when its requests are done.
func (t *transports) acquire() *transportRef {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cur.users.Add(1)
	return t.cur
}

func (r *transportRef) release() { r.users.Done() }

// renew replaces used, whose requests found a leader moved or a broker unreachable, unless
// it was replaced already or the last replacement is too recent.
func (t *transports) renew(used *transportRef) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur != used || time.Since(t.renewed) < renewEvery {
		return
	}
	t.cur = &transportRef{rt: t.newRT()}
	t.renewed = time.Now()
	go func() {
		used.users.Wait()
		closeIdle(used.rt)
	}()
}

// close closes the current transport's idle connections.
func (t *transports) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	closeIdle(t.cur.rt)
}

func closeIdle(rt kafkago.RoundTripper) {
	if tr, ok := rt.(*kafkago.Transport); ok {
		tr.CloseIdleConnections()
	}
}
