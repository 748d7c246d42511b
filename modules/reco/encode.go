package reco

import (
	"encoding/json"
	"net/http"
	"sync"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
)

// writeReco writes the /reco answer. It is the body encoding/json would produce (echo's
// serializer: HTML-safe escaping, a trailing newline), built by appending: reflection and
// the encoder's allocations were several percent of a request's CPU. ?pretty keeps echo's
// indented output.
func writeReco(c echo.Context, resp *recoResponse) error {
	if rawQuery(c.Request().URL.RawQuery).has("pretty") || c.Echo().Debug {
		return c.JSON(http.StatusOK, resp)
	}
	n := 64 + len(resp.RequestID) + len(resp.ModelVersion) + len(resp.Strategy)
	for _, it := range resp.Items {
		n += len(it) + 3
	}
	bp := bodyBufs.Get().(*[]byte)
	b := (*bp)[:0]
	if cap(b) < n {
		b = make([]byte, 0, n)
	}
	b = append(b, `{"request_id":`...)
	b = appendJSONString(b, resp.RequestID)
	b = append(b, `,"items":[`...)
	for i, it := range resp.Items {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, it)
	}
	b = append(b, `],"model_version":`...)
	b = appendJSONString(b, resp.ModelVersion)
	b = append(b, `,"strategy":`...)
	b = appendJSONString(b, resp.Strategy)
	b = append(b, "}\n"...)
	err := c.JSONBlob(http.StatusOK, b) // the writer copies b (io.Writer does not keep it)
	if cap(b) <= maxPooledBody {
		*bp = b
		bodyBufs.Put(bp)
	}
	return err
}

// bodyBufs holds /reco's answer buffers between requests: the answer was ~5 % of the bytes
// `recsys all` allocated per request (heap profile at 10,000 req/s), and every allocated
// byte brings the next collection nearer.
var bodyBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBody keeps a rare huge answer (k=500 of long ids) from staying in the pool.
const maxPooledBody = 16 << 10

// appendJSONString appends s as a JSON string exactly as encoding/json writes it with HTML
// escaping. Ids are almost always plain ASCII: anything else takes encoding/json's own path.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, err := json.Marshal(s)
			if err != nil { // cannot happen for a string
				return append(b, `""`...)
			}
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
