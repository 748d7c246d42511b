// Package eval measures recommendation quality offline by replaying public rating data (the
// MovieLens files) through the product's own feature and ranking code (features.Apply,
// features.MemoryStore, ranking.Weighted) and through baselines, with two protocols:
// prequential (test-then-learn over the time-ordered stream) and leave-last-out.
// cmd/eval.go is the thin `recsys eval` command over this package.
package eval

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Rating is one interaction of the dataset, used as a watch of Item by User at TsMs.
type Rating struct {
	User  string
	Item  string
	TsMs  int64
	Value float64
	// Line is the 1-based line in the file; it breaks timestamp ties.
	Line int
}

// LoadFile reads ml-100k u.data (user \t item \t rating \t unix_ts) or ml-latest-small
// ratings.csv (userId,movieId,rating,timestamp with a header) and returns the ratings in
// replay order: by timestamp, ties by line order.
func LoadFile(path string) ([]Rating, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open dataset: %w", err)
	}
	defer f.Close()
	rs, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("read dataset %s: %w", path, err)
	}
	return rs, nil
}

// Parse reads either format (detected per line: a tab means u.data, a comma ratings.csv; a
// first line that is not numeric is a header) and sorts the ratings into replay order.
func Parse(r io.Reader) ([]Rating, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var out []Rating
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		sep := "\t"
		if !strings.Contains(text, "\t") {
			sep = ","
		}
		f := strings.Split(text, sep)
		if len(f) < 4 {
			return nil, fmt.Errorf("line %d: want 4 fields, got %d", line, len(f))
		}
		ts, err := strconv.ParseInt(strings.TrimSpace(f[3]), 10, 64)
		if err != nil {
			if line == 1 {
				continue // header
			}
			return nil, fmt.Errorf("line %d: timestamp %q: %w", line, f[3], err)
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(f[2]), 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: rating %q: %w", line, f[2], err)
		}
		u, it := strings.TrimSpace(f[0]), strings.TrimSpace(f[1])
		if u == "" || it == "" {
			return nil, fmt.Errorf("line %d: empty user or item", line)
		}
		out = append(out, Rating{User: u, Item: it, TsMs: ts * 1000, Value: v, Line: line})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no ratings")
	}
	slices.SortStableFunc(out, func(a, b Rating) int { return cmp.Compare(a.TsMs, b.TsMs) })
	return out, nil
}
