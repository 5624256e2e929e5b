// Package arn knows the shapes of IVS real-time's ARNs, so that input can
// be checked before it reaches IVS by packages that need no IVS client.
package arn

import (
	"regexp"
	"strings"
)

// The formats of IVS real-time's ARNs (the service model's patterns, in
// full).
var (
	StagePattern     = regexp.MustCompile(`^arn:aws:ivs:[a-z0-9-]+:[0-9]+:stage/[a-zA-Z0-9-]+$`)
	PublicKeyPattern = regexp.MustCompile(`^arn:aws:ivs:[a-z0-9-]+:[0-9]+:public-key/[a-zA-Z0-9-]+$`)
)

// Region is the region field of an ARN (arn:partition:service:region:…),
// or "" when s is not an ARN.
func Region(s string) string {
	f := strings.SplitN(s, ":", 5)
	if len(f) < 5 || f[0] != "arn" {
		return ""
	}
	return f[3]
}
