package flagenv

import (
	"errors"
	"fmt"
	"time"
)

// Problems collects a configuration's invalid settings for its Validate method, each message
// naming the flag, so that one start-up error lists everything to fix.
type Problems struct{ errs []error }

// Add records err; nil is ignored.
func (p *Problems) Add(err error) {
	if err != nil {
		p.errs = append(p.errs, err)
	}
}

// Addf records a problem described by format and args.
func (p *Problems) Addf(format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf(format, args...))
}

// IntBetween requires lo <= v <= hi.
func (p *Problems) IntBetween(flag string, v, lo, hi int) {
	if v < lo || v > hi {
		p.Addf("--%s must be between %d and %d, got %d", flag, lo, hi, v)
	}
}

// DurationBetween requires lo <= v <= hi.
func (p *Problems) DurationBetween(flag string, v, lo, hi time.Duration) {
	if v < lo || v > hi {
		p.Addf("--%s must be between %s and %s, got %s", flag, lo, hi, v)
	}
}

// DurationAtLeast requires v >= lo.
func (p *Problems) DurationAtLeast(flag string, v, lo time.Duration) {
	if v < lo {
		p.Addf("--%s must be >= %s, got %s", flag, lo, v)
	}
}

// DurationPositive requires v > 0.
func (p *Problems) DurationPositive(flag string, v time.Duration) {
	if v <= 0 {
		p.Addf("--%s must be > 0, got %s", flag, v)
	}
}

// Err is every recorded problem joined, or nil.
func (p *Problems) Err() error { return errors.Join(p.errs...) }
