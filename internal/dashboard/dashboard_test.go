package dashboard

import (
	"io/fs"
	"regexp"
	"testing"
)

// Every file the page loads is embedded: a renamed asset would otherwise
// show as a broken page only in a browser.
func TestPageAssetsEmbedded(t *testing.T) {
	page, err := fs.ReadFile(Files(), Page)
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile(`(?:src|href)="dashboard/(static/[^"]+)"`).FindAllStringSubmatch(string(page), -1)
	if len(refs) == 0 {
		t.Fatal("the page loads nothing from dashboard/static/")
	}
	for _, ref := range refs {
		if _, err := fs.Stat(Files(), ref[1]); err != nil {
			t.Errorf("the page loads %s, which is not embedded: %v", ref[1], err)
		}
	}
}

func TestETagFollowsContent(t *testing.T) {
	page, js := ETag(Page), ETag("static/dashboard.js")
	if page == "" || js == "" || page == js {
		t.Errorf("ETag(%s) = %q, ETag(static/dashboard.js) = %q: want two different tags", Page, page, js)
	}
	if got := ETag("static/nothing.js"); got != "" {
		t.Errorf("ETag of a file that is not there = %q, want none", got)
	}
}
