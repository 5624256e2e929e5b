package emulator

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// Timeouts of the servers NewHTTPServer builds. A client that sends its
// request slowly, or never reads the answer, holds a connection and a
// goroutine; these bound how long.
const (
	serverReadHeaderTimeout = 10 * time.Second
	// serverReadTimeout covers the whole request, body included: IVS
	// requests are at most maxRequestBody (1 MiB), sent in well under this.
	serverReadTimeout = 30 * time.Second
	// serverWriteTimeout runs from the end of the request headers until the
	// answer is written, so it must exceed the time the body takes to come
	// (at most serverReadTimeout) plus the most latency the emulator adds
	// (maxLatency); otherwise a call with injected latency would be cut off
	// instead of answered late.
	serverWriteTimeout   = 60 * time.Second
	serverIdleTimeout    = 120 * time.Second
	serverMaxHeaderBytes = 64 << 10
	// maxLatency is the most latency one call is held back, from --latency
	// and an injected fault together (each is refused above it, their sum
	// is capped), so that the answer fits in serverWriteTimeout.
	maxLatency = 20 * time.Second
)

// NewHTTPServer returns an http.Server for h with timeouts and a header size
// limit set, for serving the emulator (or anything else) on a network:
// ReadHeaderTimeout 10 s, ReadTimeout 30 s, WriteTimeout 60 s, IdleTimeout
// 120 s, MaxHeaderBytes 64 KiB. WriteTimeout leaves room for the most latency
// the emulator can be told to add (20 s). Set Addr, or serve on a listener;
// the fields may be changed before serving.
func NewHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: serverReadHeaderTimeout,
		ReadTimeout:       serverReadTimeout,
		WriteTimeout:      serverWriteTimeout,
		IdleTimeout:       serverIdleTimeout,
		MaxHeaderBytes:    serverMaxHeaderBytes,
	}
}

// IsLoopbackAddr reports whether the listen address hostport ("host:port")
// is reachable only from this machine: its host is "localhost", an address
// in 127.0.0.0/8, or ::1. An empty host (":4566") and the unspecified
// addresses 0.0.0.0 and :: listen on every interface, so they are not; nor is
// any other host name, which may resolve to anything.
func IsLoopbackAddr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
