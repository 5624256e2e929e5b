package loadtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
)

// CheckLoopback accepts an http(s) URL whose host is on this machine: an IP
// in 127.0.0.0/8, ::1, or the name localhost. A load generator pointed
// anywhere else would load someone else's server, so it refuses before
// sending anything.
func CheckLoopback(flagName, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("--%s %q: %w", flagName, raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("--%s %q: must be an http(s) URL such as http://127.0.0.1:3000", flagName, raw)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("--%s %q: no host", flagName, raw)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--%s %q: the load test only targets this machine (127.0.0.1, ::1 or localhost), not %s", flagName, raw, host)
}

var errNotLoopback = errors.New("refusing to connect to an address that is not loopback")

// loopbackOnly is a net.Dialer Control function: it refuses every
// connection to an address off this machine. It backs CheckLoopback up for
// names such as localhost, whose address comes from the resolver.
func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: %s", errNotLoopback, address)
	}
	return nil
}
