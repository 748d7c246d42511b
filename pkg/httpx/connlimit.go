package httpx

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Connection cap metrics, process-wide: every capped listener of the process adds to them.
var (
	openConns       atomic.Int64
	connWaits       = metrics.NewCounter("recsys_http_connection_waits_total")
	connIdleEvicted = metrics.NewCounter("recsys_http_connection_idle_closed_total")
	_               = metrics.NewGauge("recsys_http_connections", func() float64 { return float64(openConns.Load()) })
)

// LimitConnections caps the connections srv holds open at once from ln at max (0: no cap, ln
// is returned as it is). Without a cap a flood of connections takes a file descriptor and
// ~17 KiB (a goroutine and its buffers) each until the process runs out of descriptors,
// and then PostgreSQL, Redis and Kafka dials fail with it, or out of memory. At the cap a new
// connection is accepted and held until one closes; the next ones wait in the kernel's
// listen backlog (at most max+1 descriptors). A held connection first closes the longest
// idle keep-alive connection (between two requests, as --http.idle-timeout would later), or
// else the next one to go idle, so idle clients never keep new ones out; only max
// connections busy with a request (or not yet through their headers,
// --http.read-header-timeout) make new ones wait. It sets srv.ConnState, keeping one already
// set; per request that costs a clock read and an atomic store.
func LimitConnections(ln net.Listener, max int, srv *http.Server) net.Listener {
	if max <= 0 {
		return ln
	}
	l := &connLimit{Listener: ln, sem: make(chan struct{}, max), closed: make(chan struct{}),
		conns: map[*limitedConn]struct{}{}}
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		if lc, ok := c.(*limitedConn); ok {
			switch {
			case s != http.StateIdle:
				lc.idleSince.Store(0)
			case l.want.CompareAndSwap(true, false):
				// A new connection waits, and no connection was idle when it came.
				connIdleEvicted.Inc()
				_ = lc.Close()
			default:
				lc.idleSince.Store(time.Now().UnixNano())
			}
		}
		if prev != nil {
			prev(c, s)
		}
	}
	return l
}

// beforeEvict, set by tests, runs between closeIdle's choice of a connection and its close.
var beforeEvict func()

type connLimit struct {
	net.Listener
	sem       chan struct{} // one per open connection
	closed    chan struct{}
	closeOnce sync.Once

	// want is set while a new connection waits for a slot that no idle connection could
	// give: the next connection to go idle gives it. Accept runs in Serve's one goroutine.
	want atomic.Bool

	mu    sync.Mutex
	conns map[*limitedConn]struct{} // open, to find an idle one at the cap
}

// Accept returns the next connection once it has a slot.
func (l *connLimit) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	select {
	case l.sem <- struct{}{}:
	default:
		connWaits.Inc()
		if !l.closeIdle() {
			l.want.Store(true)
		}
		select {
		case l.sem <- struct{}{}:
			l.want.Store(false)
		case <-l.closed:
			l.want.Store(false)
			_ = c.Close()
			return nil, net.ErrClosed
		}
	}
	lc := &limitedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns[lc] = struct{}{}
	l.mu.Unlock()
	openConns.Add(1)
	return lc, nil
}

// closeIdle closes the connection idle for the longest and reports whether there was one.
// It first claims the connection (idleSince to evicted) against its next request, which
// claims it on its first byte (limitedConn.Read): a request that arrives just then is either
// served or never read, the client seeing the connection closed as at --http.idle-timeout
// (and resending an idempotent request); it is never served and then cut off its answer.
func (l *connLimit) closeIdle() bool {
	for {
		var oldest *limitedConn
		var since int64
		l.mu.Lock()
		for c := range l.conns {
			if s := c.idleSince.Load(); s > 0 && (oldest == nil || s < since) {
				oldest, since = c, s
			}
		}
		l.mu.Unlock()
		if oldest == nil {
			return false
		}
		if !oldest.idleSince.CompareAndSwap(since, evicted) {
			continue // its next request came: look again
		}
		if beforeEvict != nil {
			beforeEvict()
		}
		connIdleEvicted.Inc()
		_ = oldest.Close()
		return true
	}
}

func (l *connLimit) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type limitedConn struct {
	net.Conn
	l         *connLimit
	idleSince atomic.Int64 // unix ns since the connection went idle between requests; 0: not idle; evicted
	once      sync.Once
}

// evicted is the idleSince of a connection closeIdle closes.
const evicted = -1

// Read claims an idle connection for the request whose bytes it returns, unless closeIdle
// claimed it first: then the bytes are dropped, unread by net/http.
func (c *limitedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if s := c.idleSince.Load(); s != 0 && n > 0 {
		if s == evicted || !c.idleSince.CompareAndSwap(s, 0) {
			return 0, net.ErrClosed
		}
	}
	return n, err
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		openConns.Add(-1)
		<-c.l.sem
	})
	return err
}

// CloseWrite and ReadFrom pass on what net/http looks for on a *net.TCPConn: the half
// close that lets a client read an error answer before the connection ends, and sendfile.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// DescriptorHeadroom is what a process needs beside its client connections: the PostgreSQL
// pool (--pg.max-conns), Redis and Kafka connections (one per broker and group), the
// listener, files, and the connection held at the cap.
const DescriptorHeadroom = 1024

// WarnDescriptorLimit logs a warning when the open-file limit leaves no room for max client
// connections beside DescriptorHeadroom: the cap then does not keep a flood from taking
// every descriptor, and with them the PostgreSQL, Redis and Kafka dials (EMFILE).
func WarnDescriptorLimit(log *slog.Logger, max int) {
	if soft, ok := descriptorLimit(); ok {
		warnDescriptorLimit(log, max, soft)
	}
}

func warnDescriptorLimit(log *slog.Logger, max int, soft uint64) {
	if max <= 0 || soft >= uint64(max)+DescriptorHeadroom {
		return
	}
	log.Warn("the open-file limit leaves no room for --http.max-connections: a connection flood can take every descriptor, and the PostgreSQL, Redis and Kafka dials fail with it; raise the limit (ulimit -n, LimitNOFILE=, the container runtime's nofile) or lower --http.max-connections",
		"nofile", soft, "max_connections", max, "headroom", DescriptorHeadroom)
}
