// Package dashboard is the operator's web page: its HTML, CSS and script,
// and a vendored chart library (uPlot), embedded in the binary so that it
// needs no build step and no network beyond this server. internal/api serves
// it at /dashboard. The page holds no data of its own: it asks for the API
// key and reads the fleet over /ws, /metrics and the HTTP API.
//
// static/vendor/uplot holds uPlot 1.6.32 (MIT, its LICENSE beside it):
// dist/uPlot.iife.min.js and dist/uPlot.min.css of `npm pack uplot@1.6.32`,
// unchanged. To update it, pack the new version and copy the same files.
package dashboard

import (
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"io/fs"
	"sync"
)

//go:embed index.html static
var files embed.FS

// Page is the page's name in Files; what it loads is under static/.
const Page = "index.html"

// Files holds the page and its assets.
func Files() fs.FS { return files }

// etags are the files' entity tags, from their content.
var etags = sync.OnceValue(func() map[string]string {
	tags := map[string]string{}
	_ = fs.WalkDir(files, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(files, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		tags[name] = `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`
		return nil
	})
	return tags
})

// ETag is the entity tag of the file name in Files ("" for none): it
// changes with the file's content, so a browser revalidates its copy and
// downloads the file again only after the binary changed.
func ETag(name string) string { return etags()[name] }
