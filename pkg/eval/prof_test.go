package eval

import (
	"context"
	"os"
	"strconv"
	"testing"
)

func TestProfProduct(t *testing.T) {
	p := os.Getenv("PROF_DATA")
	if p == "" {
		t.Skip()
	}
	rs, err := LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(os.Getenv("PROF_MAX")); n > 0 {
		rs = rs[:n]
	}
	c := DefaultConfig()
	res, err := Prequential(context.Background(), rs, []Method{NewProduct("recsys", c.Product)}, PrequentialOptions{K: 10, HoldoutFrom: 0.8, TestEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v %+v %v", *res[0].Tuning, *res[0].Holdout, res[0].MeanLatencyUs)
}
