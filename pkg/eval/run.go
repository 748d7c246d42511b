package eval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// Config configures a `recsys eval` run.
type Config struct {
	Data        string
	Protocols   []string
	Methods     []string
	K           int
	Windows     int
	HoldoutFrom float64
	TestEvery   int
	CurvePoints int
	MaxEvents   int
	OutputJSON  string
	OutputSVG   string
	NoProgress  bool

	KNNNeighbours   int
	KNNRetrainEvery int
	KNNMaxProfile   int

	OriginalExcludeRated bool

	BPR BPROptions

	Product ProductOptions
	// EASE enables the product's learned component with EASEOptions.
	EASE        bool
	EASEOptions ranking.EASEOptions
}

// Method and protocol names.
const (
	MethodProduct     = "recsys"
	MethodMostPopular = "most_popular"
	MethodOriginal    = "original_rule"
	MethodItemKNN     = "item_knn"
	MethodBPR         = "bpr"

	ProtocolPrequential  = "prequential"
	ProtocolLeaveLastOut = "leave-last-out"
)

// DefaultConfig returns the defaults; the product uses the tuned feature and ranking defaults.
func DefaultConfig() Config {
	return Config{
		Protocols:       []string{ProtocolPrequential, ProtocolLeaveLastOut},
		Methods:         []string{MethodProduct, MethodMostPopular, MethodOriginal, MethodItemKNN, MethodBPR},
		K:               10,
		Windows:         10,
		HoldoutFrom:     0.8,
		TestEvery:       1,
		CurvePoints:     50,
		KNNNeighbours:   100,
		KNNRetrainEvery: 2000,
		KNNMaxProfile:   200,
		BPR:             DefaultBPROptions(),
		Product:         ProductOptions{Features: features.DefaultConfig(), Ranking: ranking.DefaultConfig(), RetrainEvery: 10000},
		EASE:            true,
		EASEOptions:     ranking.DefaultEASEOptions(),
	}
}

// RegisterFlags adds the eval flags (and the features.* and ranking.* flags of the product).
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Data, "data", c.Data, "ratings file: ml-100k/u.data or ml-latest-small/ratings.csv (required; never copy the datasets into the repository)")
	fs.StringSliceVar(&c.Protocols, "protocol", c.Protocols, "protocols to run: prequential, leave-last-out")
	fs.StringSliceVar(&c.Methods, "methods", c.Methods, "methods to evaluate: recsys, most_popular, original_rule, item_knn, bpr")
	fs.IntVar(&c.K, "k", c.K, "list length (HR@k, NDCG@k)")
	fs.IntVar(&c.Windows, "windows", c.Windows, "prequential: number of equal-count windows reported")
	fs.Float64Var(&c.HoldoutFrom, "holdout-from", c.HoldoutFrom, "prequential: fraction of the stream after which events are the held-out part")
	fs.IntVar(&c.TestEvery, "test-every", c.TestEvery, "prequential: test every n-th event (all are applied); 1 tests all")
	fs.IntVar(&c.CurvePoints, "curve-points", c.CurvePoints, "prequential: points of the HR curve in the report and plot")
	fs.IntVar(&c.MaxEvents, "max-events", c.MaxEvents, "replay only the first n events in time order (0 = all), e.g. to tune on the part before the held-out events")
	fs.StringVar(&c.OutputJSON, "output-json", c.OutputJSON, "write the JSON report to this file")
	fs.StringVar(&c.OutputSVG, "output-svg", c.OutputSVG, "write an SVG plot of prequential HR@k over the replay to this file")
	fs.BoolVar(&c.NoProgress, "no-progress", c.NoProgress, "do not draw the progress bar")
	fs.IntVar(&c.KNNNeighbours, "knn.neighbours", c.KNNNeighbours, "item-kNN baseline: neighbours kept per item")
	fs.IntVar(&c.KNNRetrainEvery, "knn.retrain-every", c.KNNRetrainEvery, "item-kNN baseline: retrain after this many events during the prequential replay")
	fs.IntVar(&c.KNNMaxProfile, "knn.max-profile", c.KNNMaxProfile, "item-kNN baseline: most recent items of the user used for scoring (0 = all)")
	fs.IntVar(&c.BPR.Factors, "bpr.factors", c.BPR.Factors, "BPR baseline: latent factors")
	fs.IntVar(&c.BPR.Epochs, "bpr.epochs", c.BPR.Epochs, "BPR baseline: SGD epochs per training (each draws as many triples as there are positives)")
	fs.Float64Var(&c.BPR.LR, "bpr.lr", c.BPR.LR, "BPR baseline: SGD learning rate")
	fs.Float64Var(&c.BPR.Reg, "bpr.reg", c.BPR.Reg, "BPR baseline: L2 regularisation")
	fs.Float64Var(&c.BPR.InitStd, "bpr.init-std", c.BPR.InitStd, "BPR baseline: standard deviation of the initial factors")
	fs.Uint64Var(&c.BPR.Seed, "bpr.seed", c.BPR.Seed, "BPR baseline: seed of the initial factors and of the SGD sampling")
	fs.IntVar(&c.BPR.RetrainEvery, "bpr.retrain-every", c.BPR.RetrainEvery, "BPR baseline: retrain from scratch after this many events during the prequential replay")
	fs.BoolVar(&c.OriginalExcludeRated, "original.exclude-rated", c.OriginalExcludeRated, "original rule baseline: also exclude every item the user rated, like the other methods (off: only its last 20 history items, as the original service did)")
	fs.BoolVar(&c.Product.RatingAsPercent, "rating-as-percent", c.Product.RatingAsPercent, "product: send rating×20 as percent_watched (watch quality follows the rating)")
	fs.BoolVar(&c.EASE, "ease", c.EASE, "product: add the learned EASE item-item component (retrained periodically from the observed events)")
	fs.Float64Var(&c.EASEOptions.Lambda, "ease.lambda", c.EASEOptions.Lambda, "EASE L2 regularisation")
	fs.IntVar(&c.EASEOptions.MaxItems, "ease.max-items", c.EASEOptions.MaxItems, "EASE: most frequent items modelled (training is cubic in this)")
	fs.IntVar(&c.EASEOptions.Neighbours, "ease.neighbours", c.EASEOptions.Neighbours, "EASE: neighbours kept per item")
	fs.IntVar(&c.EASEOptions.Workers, "ease.workers", c.EASEOptions.Workers, "EASE: goroutines for the matrix inversion")
	fs.IntVar(&c.Product.RetrainEvery, "ease.retrain-every", c.Product.RetrainEvery, "EASE: retrain after this many events during the prequential replay")
	c.Product.Features.RegisterFlags(fs, "features.")
	c.Product.Ranking.RegisterFlags(fs)
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	if c.Data == "" {
		errs = append(errs, errors.New("--data is required (e.g. ../shared/datasets/ml-latest-small/ratings.csv)"))
	}
	for _, p := range c.Protocols {
		if p != ProtocolPrequential && p != ProtocolLeaveLastOut {
			errs = append(errs, fmt.Errorf("--protocol must be prequential or leave-last-out, got %q", p))
		}
	}
	if len(c.Protocols) == 0 {
		errs = append(errs, errors.New("--protocol must name at least one protocol"))
	}
	for _, m := range c.Methods {
		switch m {
		case MethodProduct, MethodMostPopular, MethodOriginal, MethodItemKNN, MethodBPR:
		default:
			errs = append(errs, fmt.Errorf("--methods: unknown method %q (want recsys, most_popular, original_rule, item_knn, bpr)", m))
		}
	}
	if len(c.Methods) == 0 {
		errs = append(errs, errors.New("--methods must name at least one method"))
	}
	if c.K < 1 || c.K > 1000 {
		errs = append(errs, fmt.Errorf("--k must be between 1 and 1000, got %d", c.K))
	}
	if c.Windows < 1 || c.Windows > 1000 {
		errs = append(errs, fmt.Errorf("--windows must be between 1 and 1000, got %d", c.Windows))
	}
	if !(c.HoldoutFrom >= 0 && c.HoldoutFrom <= 1) {
		errs = append(errs, fmt.Errorf("--holdout-from must be between 0 and 1, got %v", c.HoldoutFrom))
	}
	if c.TestEvery < 1 {
		errs = append(errs, fmt.Errorf("--test-every must be >= 1, got %d", c.TestEvery))
	}
	if c.MaxEvents < 0 {
		errs = append(errs, fmt.Errorf("--max-events must be >= 0, got %d", c.MaxEvents))
	}
	if c.CurvePoints < 2 || c.CurvePoints > 10000 {
		errs = append(errs, fmt.Errorf("--curve-points must be between 2 and 10000, got %d", c.CurvePoints))
	}
	if c.KNNNeighbours < 1 {
		errs = append(errs, fmt.Errorf("--knn.neighbours must be >= 1, got %d", c.KNNNeighbours))
	}
	if c.KNNRetrainEvery < 1 {
		errs = append(errs, fmt.Errorf("--knn.retrain-every must be >= 1, got %d", c.KNNRetrainEvery))
	}
	if c.KNNMaxProfile < 0 {
		errs = append(errs, fmt.Errorf("--knn.max-profile must be >= 0, got %d", c.KNNMaxProfile))
	}
	if slices.Contains(c.Methods, MethodBPR) {
		if err := c.BPR.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("--bpr.*: %w", err))
		}
		if c.BPR.RetrainEvery < 1 {
			errs = append(errs, fmt.Errorf("--bpr.retrain-every must be >= 1, got %d", c.BPR.RetrainEvery))
		}
	}
	if c.EASE {
		if err := c.EASEOptions.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("--ease.*: %w", err))
		}
		if c.Product.RetrainEvery < 1 {
			errs = append(errs, fmt.Errorf("--ease.retrain-every must be >= 1, got %d", c.Product.RetrainEvery))
		}
	}
	errs = append(errs, c.Product.Features.Validate(), c.Product.Ranking.Validate())
	return errors.Join(errs...)
}

// Report is the JSON report of a run.
type Report struct {
	Dataset      string         `json:"dataset"`
	Events       int            `json:"events"`
	Users        int            `json:"users"`
	Items        int            `json:"items"`
	K            int            `json:"k"`
	HoldoutFrom  float64        `json:"holdout_from"`
	TestEvery    int            `json:"test_every"`
	Prequential  []MethodResult `json:"prequential,omitempty"`
	LeaveLastOut []MethodResult `json:"leave_last_out,omitempty"`
	Features     any            `json:"features_config"`
	Ranking      any            `json:"ranking_config"`
	RatingAsPct  bool           `json:"rating_as_percent"`
	// OriginalExcludeRated records --original.exclude-rated.
	OriginalExcludeRated bool    `json:"original_exclude_rated,omitempty"`
	EASE                 any     `json:"ease,omitempty"`
	BPR                  any     `json:"bpr,omitempty"`
	DurationSec          float64 `json:"duration_sec"`
}

func (c Config) methods(prequential bool) []Method {
	var out []Method
	for _, m := range c.Methods {
		switch m {
		case MethodProduct:
			po := c.Product
			if c.EASE {
				eo := c.EASEOptions
				po.EASE = &eo
			}
			if !prequential {
				po.RetrainEvery = 0 // trained once by LeaveLastOut
			}
			out = append(out, NewProduct(MethodProduct, po))
		case MethodMostPopular:
			out = append(out, NewMostPopular())
		case MethodOriginal:
			o := NewOriginal()
			o.ExcludeRated = c.OriginalExcludeRated
			out = append(out, o)
		case MethodItemKNN:
			every := c.KNNRetrainEvery
			if !prequential {
				every = 0 // trained once by LeaveLastOut
			}
			out = append(out, NewItemKNN(c.KNNNeighbours, every, c.KNNMaxProfile))
		case MethodBPR:
			o := c.BPR
			if !prequential {
				o.RetrainEvery = 0 // trained once by LeaveLastOut
			}
			out = append(out, NewBPR(o))
		}
	}
	return out
}

// Run executes the configured protocols, writes the optional JSON and SVG outputs and returns
// the report. progress receives the progress bar (nil or NoProgress: none).
func Run(ctx context.Context, c Config, progress io.Writer) (*Report, error) {
	start := time.Now()
	ratings, err := LoadFile(c.Data)
	if err != nil {
		return nil, err
	}
	if c.MaxEvents > 0 && c.MaxEvents < len(ratings) {
		ratings = ratings[:c.MaxEvents]
	}
	users := map[string]struct{}{}
	for _, r := range ratings {
		users[r.User] = struct{}{}
	}
	rep := &Report{
		Dataset: filepath.Base(filepath.Dir(c.Data)) + "/" + filepath.Base(c.Data),
		Events:  len(ratings), Users: len(users), Items: catalogSize(ratings),
		K: c.K, HoldoutFrom: c.HoldoutFrom, TestEvery: c.TestEvery,
		Features: c.Product.Features, Ranking: c.Product.Ranking, RatingAsPct: c.Product.RatingAsPercent,
		OriginalExcludeRated: c.OriginalExcludeRated,
	}
	if slices.Contains(c.Methods, MethodBPR) {
		rep.BPR = c.BPR
	}
	if c.EASE {
		rep.EASE = struct {
			ranking.EASEOptions
			RetrainEvery int
		}{c.EASEOptions, c.Product.RetrainEvery}
	}
	bar := func(desc string) (*progressbar.ProgressBar, func(int)) {
		if c.NoProgress || progress == nil {
			return nil, nil
		}
		b := progressbar.NewOptions(len(ratings),
			progressbar.OptionSetWriter(progress),
			progressbar.OptionSetDescription(desc),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("events"),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		return b, func(n int) { _ = b.Set(n) }
	}
	for _, p := range c.Protocols {
		b, cb := bar(p)
		switch p {
		case ProtocolPrequential:
			rep.Prequential, err = Prequential(ctx, ratings, c.methods(true), PrequentialOptions{
				K: c.K, Windows: c.Windows, HoldoutFrom: c.HoldoutFrom, CurvePoints: c.CurvePoints,
				TestEvery: c.TestEvery, Progress: cb,
			})
		case ProtocolLeaveLastOut:
			rep.LeaveLastOut, err = LeaveLastOut(ctx, ratings, c.methods(false), LeaveLastOutOptions{K: c.K, Progress: cb})
		}
		if b != nil {
			_ = b.Finish()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	rep.DurationSec = time.Since(start).Seconds()
	if c.OutputJSON != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encode report: %w", err)
		}
		if err := os.WriteFile(c.OutputJSON, append(b, '\n'), 0o644); err != nil {
			return nil, fmt.Errorf("write report: %w", err)
		}
	}
	if c.OutputSVG != "" && len(rep.Prequential) > 0 {
		svg := PlotSVG(fmt.Sprintf("Prequential HR@%d over the replay of %s", c.K, rep.Dataset), c.HoldoutFrom, rep.Prequential)
		if err := os.WriteFile(c.OutputSVG, []byte(svg), 0o644); err != nil {
			return nil, fmt.Errorf("write plot: %w", err)
		}
	}
	return rep, nil
}

// WriteTable prints the report's results as aligned text.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "dataset %s: %d events, %d users, %d items, k=%d\n", r.Dataset, r.Events, r.Users, r.Items, r.K)
	if len(r.Prequential) > 0 {
		fmt.Fprintf(tw, "\nprequential (held-out = events after %.0f%%)\nmethod\tHR@%d all\tNDCG@%d all\tHR@%d tuning\tHR@%d held-out\tNDCG@%d held-out\tcoverage\tlatency µs wall/cpu\n", r.HoldoutFrom*100, r.K, r.K, r.K, r.K, r.K)
		for _, m := range r.Prequential {
			fmt.Fprintf(tw, "%s\t%.4f\t%.4f\t%.4f\t%.4f\t%.4f\t%.3f\t%.0f / %.0f\n", m.Method, m.Overall.HR, m.Overall.NDCG, m.Tuning.HR, m.Holdout.HR, m.Holdout.NDCG, m.Coverage, m.MeanLatencyUs, m.MeanCPUUs)
		}
	}
	if len(r.LeaveLastOut) > 0 {
		fmt.Fprintf(tw, "\nleave-last-out\nmethod\tHR@%d\tNDCG@%d\tusers\tcoverage\tlatency µs wall/cpu\n", r.K, r.K)
		for _, m := range r.LeaveLastOut {
			fmt.Fprintf(tw, "%s\t%.4f\t%.4f\t%d\t%.3f\t%.0f / %.0f\n", m.Method, m.Overall.HR, m.Overall.NDCG, m.Overall.N, m.Coverage, m.MeanLatencyUs, m.MeanCPUUs)
		}
	}
	fmt.Fprintf(tw, "\n%.1fs\n", r.DurationSec)
	return tw.Flush()
}

// Find returns the named method's result, or nil.
func Find(rs []MethodResult, method string) *MethodResult {
	for i := range rs {
		if strings.EqualFold(rs[i].Method, method) {
			return &rs[i]
		}
	}
	return nil
}
