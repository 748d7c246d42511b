package testutil

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// RedisCPU is the CPU time the Redis server has used so far (INFO cpu, user and system): the
// benchmarks report Redis' share of the work from two readings.
func RedisCPU(tb testing.TB, rd rueidis.Client) time.Duration {
	tb.Helper()
	info, err := rd.Do(context.Background(), rd.B().Info().Section("cpu").Build()).ToString()
	if err != nil {
		tb.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

// RedisClient opens a plain client of the Redis server at url (closed when the test ends),
// for what a test reads from the server itself, such as RedisCPU.
func RedisClient(tb testing.TB, url string) rueidis.Client {
	tb.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		tb.Fatalf("redis url: %v", err)
	}
	opt.DisableCache = true
	rd, err := rueidis.NewClient(opt)
	if err != nil {
		tb.Fatalf("open redis %s: %v", opt.InitAddress, err)
	}
	tb.Cleanup(rd.Close)
	return rd
}

// RedisKeys returns every key of the server matching pattern, sorted, each once (SCAN may
// return a key twice).
func RedisKeys(tb testing.TB, rd rueidis.Client, pattern string) []string {
	tb.Helper()
	var keys []string
	for cursor := uint64(0); ; {
		e, err := rd.Do(context.Background(), rd.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
		if err != nil {
			tb.Fatalf("scan redis keys %s: %v", pattern, err)
		}
		keys = append(keys, e.Elements...)
		if cursor = e.Cursor; cursor == 0 {
			slices.Sort(keys)
			return slices.Compact(keys)
		}
	}
}
