package redis

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/stagefleet/stagefleet/internal/store"
)

// seatCursor is where a scan of a broadcast's seats goes on: from HSCAN
// cursor at in group (group == the number of groups once every group has
// been scanned), after the seats left over from the page before.
type seatCursor struct {
	group int
	at    uint64
	left  leftSeats
}

// leftSeats are seats an HSCAN answered beyond a page's count. HSCAN
// answers whole hash buckets and cannot resume inside one, so the ids of
// the rest ride in the cursor and the next page reads them first: a page
// never holds more than it was asked for.
type leftSeats struct {
	Group int      `json:"g"`
	Users []string `json:"u"`
}

// ScanSeats walks the groups one after another, going on to the next
// group while a page is short. Its cursor is Redis's HSCAN cursor, after
// the group and a colon past group 0, then "~" and the left-over seats
// (base64 JSON) when there are any.
func (s *Store) ScanSeats(ctx context.Context, broadcastID, cursor string, count int) ([]store.Seat, string, error) {
	lay, err := s.layoutOf(ctx, broadcastID)
	if err != nil {
		return nil, "", err
	}
	n := lay.n()
	c, err := parseSeatCursor(cursor, n)
	if err != nil {
		return nil, "", err
	}
	count = max(count, 1)
	out := make([]store.Seat, 0, min(count, 1024))
	for {
		if room := count - len(out); room > 0 && len(c.left.Users) > 0 {
			take := c.left.Users[:min(len(c.left.Users), room)]
			seats, err := s.seatsOf(ctx, lay.group(c.left.Group).seats(), take)
			if err != nil {
				return nil, "", err
			}
			out = append(out, seats...)
			c.left.Users = c.left.Users[len(take):]
		}
		switch {
		case len(c.left.Users) > 0 || len(out) == count && c.group < n:
			return out, c.String(), nil
		case c.group == n:
			return out, "", nil
		}
		kv, next, err := s.rdb.HScan(ctx, lay.group(c.group).seats(), c.at, "*", int64(count-len(out))).Result()
		if err != nil {
			return nil, "", err
		}
		room := min(len(kv)/2, count-len(out))
		for i := range room {
			var seat store.Seat
			if err := decodeInto(kv[2*i+1], &seat); err != nil {
				return nil, "", err
			}
			out = append(out, seat)
		}
		c.left.Group = c.group
		for i := 2 * room; i < len(kv); i += 2 {
			c.left.Users = append(c.left.Users, kv[i])
		}
		// One HSCAN step a page within a group, so that a page costs
		// the same whatever the group's size; a short page goes on only
		// into the next group.
		if c.at = next; next != 0 {
			return out, c.String(), nil
		}
		c.group++
	}
}

// seatsOf reads the seats of users in one group's hash, leaving out any
// seat that is gone.
func (s *Store) seatsOf(ctx context.Context, key string, users []string) ([]store.Seat, error) {
	vals, err := s.rdb.HMGet(ctx, key, users...).Result()
	if err != nil {
		return nil, err
	}
	out := make([]store.Seat, 0, len(vals))
	for _, v := range vals {
		data, ok := v.(string)
		if !ok {
			continue
		}
		var seat store.Seat
		if err := decodeInto(data, &seat); err != nil {
			return nil, err
		}
		out = append(out, seat)
	}
	return out, nil
}

// String is the cursor as a client carries it; never "", which says a
// scan is done.
func (c seatCursor) String() string {
	var b strings.Builder
	if c.group > 0 {
		b.WriteString(strconv.Itoa(c.group))
		b.WriteByte(':')
	}
	b.WriteString(strconv.FormatUint(c.at, 10))
	if len(c.left.Users) > 0 {
		data, _ := json.Marshal(c.left) // strings and an int: cannot fail
		b.WriteByte('~')
		b.WriteString(base64.RawURLEncoding.EncodeToString(data))
	}
	return b.String()
}

// parseSeatCursor reads a cursor String wrote for a broadcast of n
// groups; any other is store.ErrNotFound.
func parseSeatCursor(cursor string, n int) (seatCursor, error) {
	var c seatCursor
	if cursor == "" {
		return c, nil
	}
	bad := fmt.Errorf("seat cursor %q: %w", cursor, store.ErrNotFound)
	at, left, hasLeft := strings.Cut(cursor, "~")
	group, from, grouped := strings.Cut(at, ":")
	if !grouped {
		group, from = "0", at
	}
	g, err := strconv.Atoi(group)
	if err != nil || g < 0 || g > n {
		return c, bad
	}
	if c.at, err = strconv.ParseUint(from, 10, 64); err != nil {
		return c, bad
	}
	c.group = g
	if hasLeft {
		data, err := base64.RawURLEncoding.DecodeString(left)
		if err != nil || json.Unmarshal(data, &c.left) != nil ||
			len(c.left.Users) == 0 || slices.Contains(c.left.Users, "") || c.left.Group < 0 || c.left.Group > min(g, n-1) {
			return c, bad
		}
	}
	// Past the last group only left-over seats can remain.
	if g == n && (!hasLeft || c.at != 0) {
		return c, bad
	}
	return c, nil
}
