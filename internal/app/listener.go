package app

import (
	"errors"
	"net"
	"sync"
)

// limitListener accepts at most n connections at once. At the limit Accept
// waits for one to close, so that further clients wait in the kernel's
// backlog rather than each holding a descriptor, a goroutine and buffers
// here.
//
// It does what golang.org/x/net/netutil.LimitListener does, except that its
// connections can still half-close: netutil's wrapper hides CloseWrite
// (golang/go#64830), and net/http half-closes to deliver an answer it sends
// before hanging up, such as 431 to an oversized header. Without it the
// client reads a connection reset instead of the answer.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, n int) *limitListener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
}

// Close closes the listener and wakes an Accept waiting at the limit.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitedConn gives its slot back when closed, once however often it is
// closed.
type limitedConn struct {
	net.Conn
	release     func()
	releaseOnce sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.releaseOnce.Do(c.release)
	return err
}

// CloseWrite half-closes the connection (TCP's FIN), as net/http does
// before hanging up on a client that may still be sending.
func (c *limitedConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return errors.ErrUnsupported
}
