package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"time"
)

// RawClient is a minimal HTTP/1.1 keep-alive client for load benchmarks, one connection per
// client goroutine, like wrk's; not safe for concurrent use. net/http's client costs tens of microseconds of CPU per
// request, and on a 2-core machine the load generator shares the cores with the server it
// measures: a lean generator leaves the server the CPU a remote client would.
type RawClient struct {
	addr string
	host string
	conn net.Conn
	r    *bufio.Reader
	buf  []byte
}

// NewRawClient returns a client for the server at base (http://host:port).
func NewRawClient(base string) (*RawClient, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	return &RawClient{addr: u.Host, host: u.Host}, nil
}

// Close closes the connection.
func (c *RawClient) Close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// Do sends method target (path and query) with an optional JSON body and returns the status
// code; the response body is read and discarded. A broken connection is redialled on the
// next call.
func (c *RawClient) Do(method, target string, body []byte, timeout time.Duration) (int, error) {
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.addr, time.Second)
		if err != nil {
			return 0, err
		}
		c.conn, c.r = conn, bufio.NewReaderSize(conn, 16<<10)
	}
	status, err := c.roundTrip(method, target, body, timeout)
	if err != nil {
		c.conn.Close()
		c.conn = nil
	}
	return status, err
}

func (c *RawClient) roundTrip(method, target string, body []byte, timeout time.Duration) (int, error) {
	_ = c.conn.SetDeadline(time.Now().Add(timeout))
	c.buf = append(c.buf[:0], method...)
	c.buf = append(c.buf, ' ')
	c.buf = append(c.buf, target...)
	c.buf = append(c.buf, " HTTP/1.1\r\nHost: "...)
	c.buf = append(c.buf, c.host...)
	c.buf = append(c.buf, "\r\nUser-Agent: recsys-bench\r\n"...)
	if body != nil {
		c.buf = append(c.buf, "Content-Type: application/json\r\nContent-Length: "...)
		c.buf = strconv.AppendInt(c.buf, int64(len(body)), 10)
		c.buf = append(c.buf, "\r\n"...)
	}
	c.buf = append(c.buf, "\r\n"...)
	c.buf = append(c.buf, body...)
	if _, err := c.conn.Write(c.buf); err != nil {
		return 0, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	length, chunked := -1, false
	for {
		h, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		k, v, _ := bytes.Cut(h, []byte(":"))
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(v)); err != nil {
				return 0, fmt.Errorf("bad content-length %q", v)
			}
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(v, []byte("chunked"))
		}
	}
	switch {
	case chunked:
		for {
			l, err := c.r.ReadSlice('\n')
			if err != nil {
				return 0, err
			}
			n, err := strconv.ParseInt(string(bytes.TrimSpace(l)), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("bad chunk size %q", l)
			}
			if _, err := c.r.Discard(int(n) + 2); err != nil { // data and CRLF
				return 0, err
			}
			if n == 0 {
				return status, nil
			}
		}
	case length >= 0:
		if _, err := c.r.Discard(length); err != nil {
			return 0, err
		}
		return status, nil
	default:
		return 0, io.ErrUnexpectedEOF // the server always sends a length on keep-alive
	}
}
