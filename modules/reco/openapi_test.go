package reco

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"recsys/pkg/events"
	"recsys/pkg/openapi"
)

// queryErrs parses q with parse and returns the 422 entries by parameter name.
func queryErrs(t *testing.T, parse func(rawQuery) (recoQuery, error), q url.Values) (recoQuery, map[string][]string) {
	t.Helper()
	r, err := parse(rawQuery(q.Encode()))
	out := map[string][]string{}
	if err == nil {
		return r, out
	}
	var he *echo.HTTPError
	if !errors.As(err, &he) {
		t.Fatalf("error %v is not an HTTP error", err)
	}
	for _, fe := range he.Message.([]events.FieldError) {
		name := fmt.Sprint(fe.Loc[1])
		out[name] = append(out[name], fe.Type)
	}
	return r, out
}

// The documented query parameters of /reco and /recommend are what the parsers apply: the
// required ones are exactly those reported missing from an empty query, the defaults are
// the values used when a parameter is absent, and the bounds hold exactly at the documented
// values.
func TestQueryParametersMatchTheParsers(t *testing.T) {
	for _, c := range []struct {
		path   string
		params []openapi.Parameter
		parse  func(rawQuery) (recoQuery, error)
	}{
		{"/reco", recoParams(), parseReco},
		{"/recommend", recommendParams(), parseRecommend},
	} {
		t.Run(c.path, func(t *testing.T) {
			valid := url.Values{}
			var required []string
			for _, p := range c.params {
				if p.Required {
					required = append(required, p.Name)
					valid.Set(p.Name, "id-1")
				}
			}
			_, errs := queryErrs(t, c.parse, url.Values{})
			var missing []string
			for name, types := range errs {
				if slices.Contains(types, "missing") {
					missing = append(missing, name)
				}
			}
			slices.Sort(missing)
			slices.Sort(required)
			if !slices.Equal(missing, required) {
				t.Errorf("missing from an empty query: %v, documented required: %v", missing, required)
			}
			r, errs := queryErrs(t, c.parse, valid)
			if len(errs) > 0 {
				t.Fatalf("valid query %v: %v", valid, errs)
			}
			for _, p := range c.params {
				try := func(v string, wantErr bool) {
					t.Helper()
					q := url.Values{}
					for k, vs := range valid {
						q[k] = vs
					}
					q.Set(p.Name, v)
					_, errs := queryErrs(t, c.parse, q)
					if (len(errs[p.Name]) > 0) != wantErr {
						t.Errorf("%s=%.20q: errors %v, want error %v", p.Name, v, errs[p.Name], wantErr)
					}
				}
				s := p.Schema
				switch p.Name {
				case "k":
					if r.k != s.Default {
						t.Errorf("k absent: %d, documented default %v", r.k, s.Default)
					}
				case "x_autolog_impressions":
					if r.autolog != s.Default {
						t.Errorf("x_autolog_impressions absent: %v, documented default %v", r.autolog, s.Default)
					}
					for _, v := range []string{"true", "false", "1", "0", "yes", "off"} {
						try(v, false)
					}
					try("maybe", true)
				default:
					if p.Schema.Default != nil || !p.Required {
						t.Errorf("parameter %s: no check of its default", p.Name)
					}
				}
				if s.Minimum != nil {
					try(fmt.Sprint(*s.Minimum), false)
					try(fmt.Sprint(*s.Minimum-1), true)
				}
				if s.Maximum != nil {
					try(fmt.Sprint(*s.Maximum), false)
					try(fmt.Sprint(*s.Maximum+1), true)
				}
				if s.MaxLength != nil {
					try(strings.Repeat("é", *s.MaxLength), false)
					try(strings.Repeat("é", *s.MaxLength+1), true)
				}
				if s.MinLength != nil {
					try(strings.Repeat("x", *s.MinLength-1), true)
				}
				if p.Name == "user_id" || p.Name == "session_id" {
					if !strings.Contains(p.Description, idPattern) {
						t.Errorf("%s: description %q does not give the pattern", p.Name, p.Description)
					}
				}
				// A rule the parser applies but the schema leaves to words lets a client or a
				// fuzzer generate values the schema calls valid and /reco refuses.
				if p.Name == "user_id" || p.Name == "session_id" || s.Pattern != "" {
					if s.Pattern == "" {
						t.Fatalf("%s: the parser checks a pattern the schema does not state", p.Name)
					}
					re := regexp.MustCompile(s.Pattern)
					for _, v := range []string{"user-1", "a@b.c", "ユーザー", "e\u0301", "①", "a b", `a"b`, "a\\b", "a{b}", "a\tb", "a\x13"} {
						try(v, !re.MatchString(v))
					}
				}
			}
		})
	}
}
