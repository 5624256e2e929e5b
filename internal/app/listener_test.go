package app

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestLimitListener: at most n connections accepted at once, a slot freed
// once per connection however often it is closed, Close wakes an Accept
// waiting at the limit, and connections can half-close.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newLimitListener(inner, 2)
	defer l.Close()

	type accepted struct {
		c   net.Conn
		err error
	}
	accept := func() chan accepted {
		ch := make(chan accepted, 1)
		go func() {
			c, err := l.Accept()
			ch <- accepted{c, err}
		}()
		return ch
	}
	clients := make([]net.Conn, 4)
	for i := range clients {
		if clients[i], err = net.Dial("tcp", inner.Addr().String()); err != nil {
			t.Fatal(err)
		}
		defer clients[i].Close()
	}

	var open []net.Conn
	for i := range 2 {
		select {
		case a := <-accept():
			if a.err != nil {
				t.Fatalf("Accept %d: %v", i, a.err)
			}
			open = append(open, a.c)
		case <-time.After(5 * time.Second):
			t.Fatalf("Accept %d of 2 waited with room left", i)
		}
	}

	third := accept()
	select {
	case a := <-third:
		t.Fatalf("a third connection was accepted at the limit of 2 (%v)", a.err)
	case <-time.After(200 * time.Millisecond):
	}
	// Closed twice: one slot back, not two.
	open[0].Close()
	open[0].Close()
	select {
	case a := <-third:
		if a.err != nil {
			t.Fatalf("Accept after a close: %v", a.err)
		}
		open[0] = a.c
	case <-time.After(5 * time.Second):
		t.Fatal("a closed connection did not free its slot")
	}
	fourth := accept()
	select {
	case a := <-fourth:
		t.Fatalf("a connection was accepted at the limit after a double close (%v)", a.err)
	case <-time.After(200 * time.Millisecond):
	}

	// Half-close: the client reads the end of the stream while the
	// connection stays open.
	hc, ok := open[1].(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("accepted connection %T cannot half-close", open[1])
	}
	if err := hc.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	var peer net.Conn
	for _, c := range clients {
		if c.LocalAddr().String() == open[1].RemoteAddr().String() {
			peer = c
		}
	}
	if peer == nil {
		t.Fatalf("no client at %s", open[1].RemoteAddr())
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("client read after CloseWrite: %v, want EOF", err)
	}

	l.Close()
	select {
	case a := <-fourth:
		if !errors.Is(a.err, net.ErrClosed) {
			t.Errorf("Accept waiting at the limit returned %v after Close, want net.ErrClosed", a.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake an Accept waiting at the limit")
	}
	for _, c := range open {
		c.Close()
	}
}
