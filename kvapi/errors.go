package kvapi

import (
	"net/http"

	"github.com/clusterkit/clusterkit/internal/httpapi"
)

// writeError and writeJSON are httpapi's, the one mapping of errors to
// answers that both APIs share.
func writeError(w http.ResponseWriter, err error) { httpapi.WriteError(w, err) }

func writeJSON(w http.ResponseWriter, status int, v any) { httpapi.WriteJSON(w, status, v) }
