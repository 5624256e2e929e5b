package redis

import (
	"errors"
	"reflect"
	"testing"

	"github.com/stagefleet/stagefleet/internal/store"
)

func TestSeatCursorRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		c    seatCursor
		n    int
	}{
		{"first group", seatCursor{at: 17}, 1},
		{"later group", seatCursor{group: 3, at: 9}, 6},
		{"later group from its start", seatCursor{group: 2}, 6},
		{"left over", seatCursor{group: 1, at: 5, left: leftSeats{Group: 1, Users: []string{"a", "b~:/", "視聽者"}}}, 2},
		{"left over from the group before", seatCursor{group: 2, left: leftSeats{Group: 1, Users: []string{"x"}}}, 3},
		{"left over past the last group", seatCursor{group: 3, left: leftSeats{Group: 2, Users: []string{"x", "y"}}}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.c.String()
			got, err := parseSeatCursor(s, tc.n)
			if err != nil || !reflect.DeepEqual(got, tc.c) {
				t.Errorf("parseSeatCursor(%q) = %+v, %v; want %+v", s, got, err, tc.c)
			}
		})
	}
}

func TestSeatCursorRefused(t *testing.T) {
	left := seatCursor{group: 1, left: leftSeats{Group: 1, Users: []string{"a"}}}.String()
	for _, bad := range []string{
		"x", "-1", "1:x", "7:0", "-1:0", "18446744073709551616",
		"2:0",                 // past the last group with nothing left over
		"0~", "0~!!", "0~e30", // no left-over users
		left[:len(left)-2],
		seatCursor{left: leftSeats{Group: 1, Users: []string{"a"}}}.String(), // left over ahead of the scan
		seatCursor{left: leftSeats{Users: []string{""}}}.String(),
	} {
		if c, err := parseSeatCursor(bad, 2); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("parseSeatCursor(%q) = %+v, %v; want ErrNotFound", bad, c, err)
		}
	}
}

// FuzzSeatCursor: any text either is refused as not found or reads back
// the same after String.
func FuzzSeatCursor(f *testing.F) {
	for _, seed := range []string{"", "0", "12", "3:40", "1:0~eyJnIjoxLCJ1IjpbImEiXX0", "~", "9:9~~"} {
		f.Add(seed, 4)
	}
	f.Fuzz(func(t *testing.T, cursor string, n int) {
		n = 1 + int(uint(n)%MaxSeatGroups)
		c, err := parseSeatCursor(cursor, n)
		if err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("parseSeatCursor(%q) = %v; want ErrNotFound", cursor, err)
			}
			return
		}
		again, err := parseSeatCursor(c.String(), n)
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("%q read as %+v, written as %q, read back as %+v, %v", cursor, c, c.String(), again, err)
		}
	})
}
