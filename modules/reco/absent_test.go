package reco

import (
	"fmt"
	"testing"
	"time"
)

// The memory of unknown users: entries last the cache's TTL (at most the user TTL), a user
// read present is forgotten, and the number of ids held stays bounded whatever comes.
func TestAbsentUsers(t *testing.T) {
	// age moves the cache's clock forward by d: its entries look d older.
	age := func(c *absentUsers, d time.Duration) { c.start = c.start.Add(-d) }
	for _, tc := range []struct {
		name    string
		userTTL time.Duration
		run     func(c *absentUsers)
		want    bool
	}{
		{"remembered", time.Hour, func(c *absentUsers) {}, true},
		{"expired", time.Hour, func(c *absentUsers) { age(c, time.Minute) }, false},
		{"within its TTL", time.Hour, func(c *absentUsers) { age(c, 59*time.Second) }, true},
		{"bounded by the user TTL", 10 * time.Second, func(c *absentUsers) { age(c, 10*time.Second) }, false},
		{"no user TTL recorded", 0, func(c *absentUsers) { age(c, 59*time.Second) }, true},
		{"forgotten once read present", time.Hour, func(c *absentUsers) { c.forget("u") }, false},
		{"another user forgotten", time.Hour, func(c *absentUsers) { c.forget("v") }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newAbsentUsers(time.Minute, 1000)
			c.add("u", tc.userTTL)
			tc.run(c)
			if got := c.has("u"); got != tc.want {
				t.Fatalf("has = %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("bounded", func(t *testing.T) {
		c := newAbsentUsers(time.Minute, 1000)
		for i := range 100_000 {
			c.add(fmt.Sprintf("bot-%d", i), time.Hour)
		}
		n := 0
		for i := range c.shards {
			n += len(c.shards[i].m)
		}
		if limit := c.max * cacheShards; n > limit || n < limit/2 {
			t.Fatalf("%d ids held after 100,000 distinct ones, want at most %d (and most of it used)", n, limit)
		}
		if !c.has("bot-99999") {
			t.Fatal("the newest id was evicted")
		}
	})

	t.Run("off", func(t *testing.T) {
		c := newAbsentUsers(0, 1000)
		c.add("u", time.Hour)
		c.forget("u")
		if c != nil || c.has("u") {
			t.Fatal("a zero TTL remembers users")
		}
	})
}
