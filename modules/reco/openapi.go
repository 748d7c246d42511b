package reco

import (
	"net/http"

	"recsys/pkg/module"
	"recsys/pkg/openapi"
)

var _ module.APIDescriber = (*Reco)(nil)

// DescribeAPI adds /reco, /recommend and /metrics/reco to the OpenAPI document, with the
// query rules parseReco and parseRecommend apply (TestQueryParametersMatchTheParsers).
func (r *Reco) DescribeAPI(d *openapi.Document) {
	busy := openapi.ErrorResponse("No store could serve the list, or no turn within --reco.queue-timeout (overloaded)")
	list := func(path, summary, description string, params []openapi.Parameter, resp any) {
		d.Add(http.MethodGet, path, openapi.Operation{Tags: []string{"recommendations"}, Summary: summary, Description: description,
			Parameters: params,
			Responses: map[string]openapi.Response{
				"200": openapi.JSONResponse("Successful Response", openapi.Of(resp)),
				"422": openapi.ValidationErrorResponse(),
				"503": busy,
			}})
	}
	list("/reco", "Ranked recommendations", "Logs the served list as an impression (request_id = the response's request_id) unless "+
		"x_autolog_impressions is false. strategy names what produced the list, with a suffix for a degraded source "+
		"(_pg_fallback, _global_snapshot).", recoParams(), recoResponse{})
	list("/recommend", "Recommendations, legacy shape", "The same ranking as /reco without impression logging; "+
		"reason.sources names the candidate sources of the list.", recommendParams(), recommendResponse{})
	d.Add(http.MethodGet, "/metrics/reco", openapi.Operation{Tags: []string{"recommendations"},
		Summary:   "In-process /reco latency and error window",
		Responses: map[string]openapi.Response{"200": openapi.JSONResponse("Successful Response", openapi.Of(windowSnapshot{}))}})
}

// idParam states the id rule as a pattern, so clients and fuzzers generate ids /reco takes,
// and in words. \p{L}, \p{M} and \p{N} need a Unicode-aware ECMA-262 engine (the u flag),
// which JSON Schema 2020-12 expects of "pattern"; an engine without \p (Python's re) cannot
// compile it, which is why the words stay.
func idParam(name string) openapi.Parameter {
	s := openapi.String(1, maxIDLen)
	s.Pattern = idPattern
	return openapi.QueryParam(name, true, "Letters and digits of any script, combining marks, and - _ . : @ / + = ~ ! $ * , ; | # % & "+
		"(the regular expression "+idPattern+")", s)
}

func kParam(def int) openapi.Parameter {
	return openapi.QueryParam("k", false, "Length of the list", &openapi.Schema{Type: "integer", Default: def,
		Minimum: openapi.Float(kMin), Maximum: openapi.Float(kMax)})
}

func recoParams() []openapi.Parameter {
	return []openapi.Parameter{idParam("user_id"), idParam("session_id"), kParam(kDefaultReco),
		openapi.QueryParam("x_autolog_impressions", false, "Log the served list as an impression (true/false, 1/0, yes/no, on/off)",
			&openapi.Schema{Type: "boolean", Default: true})}
}

func recommendParams() []openapi.Parameter {
	return []openapi.Parameter{idParam("user_id"), kParam(kDefaultRecommend)}
}
