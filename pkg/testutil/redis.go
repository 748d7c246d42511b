package testutil

import (
	"context"
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
