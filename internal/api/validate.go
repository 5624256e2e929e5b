package api

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/stagefleet/stagefleet/internal/arn"
	"github.com/stagefleet/stagefleet/internal/fleet"
)

var (
	participantPattern = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)
	stageNamePattern   = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,128}$`)
	stageIDPattern     = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)
)

// check collects what is wrong with a request, so that one answer names
// every missing field.
type check struct {
	missing  []string
	problems []string
}

// required notes name as missing when v is empty.
func (c *check) required(name, v string) bool {
	if strings.TrimSpace(v) == "" {
		c.missing = append(c.missing, name)
		return false
	}
	return true
}

func (c *check) problem(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

// userID checks a viewer's, host's or server's id: 1 to 128 characters.
func (c *check) userID(name, v string) {
	if !c.required(name, v) {
		return
	}
	if utf8.RuneCountInString(v) > 128 {
		c.problem("%s must be at most 128 characters", name)
	}
	if strings.IndexFunc(v, unicode.IsControl) >= 0 || !utf8.ValidString(v) {
		c.problem("%s must be printable UTF-8 text without control characters", name)
	}
}

func (c *check) stageArn(name, v string, required bool) {
	if v == "" && !required {
		return
	}
	if c.required(name, v) && !arn.StagePattern.MatchString(v) {
		c.problem("%s must be a stage ARN such as arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456", name)
	}
}

func (c *check) participantID(name, v string) {
	if c.required(name, v) && !participantPattern.MatchString(v) {
		c.problem("%s must be 1 to 64 letters, digits or dashes", name)
	}
}

// broadcast returns the broadcast id, defaulting to the default one.
func (c *check) broadcast(v string) string {
	if v == "" {
		return fleet.DefaultBroadcast
	}
	if !fleet.ValidBroadcastID(v) {
		c.problem("broadcastId must be 1 to 64 letters, digits, '-' or '_'")
	}
	return v
}

func (c *check) err() *apiError {
	switch {
	case len(c.missing) > 0:
		e := badRequest("missing required fields: %s", strings.Join(c.missing, ", "))
		e.details = map[string]any{"missingFields": c.missing}
		return e
	case len(c.problems) > 0:
		return badRequest("%s", strings.Join(c.problems, "; "))
	}
	return nil
}

// pathArn returns the stage ARN of a path wildcard, which arrives raw
// (arn:aws:ivs:...:stage/abc) or percent-encoded, possibly twice.
func pathArn(raw string) (string, *apiError) {
	v := raw
	for range 2 {
		if !strings.Contains(v, "%") {
			break
		}
		u, err := url.PathUnescape(v)
		if err != nil {
			return "", badRequest("stage ARN in the path is not valid percent-encoding")
		}
		v = u
	}
	if !arn.StagePattern.MatchString(v) {
		return "", badRequest("the path must end with a stage ARN such as arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456 (raw or percent-encoded)")
	}
	return v, nil
}
