// Copyright (c) tokenfleet.pki contributors
// GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
// SPDX-License-Identifier: GPL-3.0-or-later

// Command step-ca runs smallstep's online CA for the integration tests:
//
//	step-ca [--password-file FILE] [--quiet] CONFIG
//
// Debian packages the CA as a library only (golang-github-smallstep-certificates-dev, no
// cmd/step-ca), so this is the smallest main package around its commands.AppCommand, which
// loads CONFIG (a ca.json) and serves it. "make deps" builds it offline into .tmp/stepca/.
package main

import (
	"fmt"
	"os"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"
	"go.step.sm/cli-utils/step"
)

// version is the Debian package's version, set by the Makefile with -ldflags "-X main.version=...".
var version = "unknown"

func main() {
	step.Set("Smallstep CA", version, "tokenfleet.pki test build")
	authority.GlobalVersion.Version = version

	app := cli.NewApp()
	app.Name = "step-ca"
	app.HelpName = "step-ca"
	app.Usage = "smallstep's online certificate authority (tokenfleet.pki test build)"
	app.UsageText = "step-ca [--password-file FILE] [--quiet] CONFIG"
	app.Version = step.Version()
	app.Flags = commands.AppCommand.Flags
	app.Action = commands.AppCommand.Action
	app.Writer = os.Stdout
	app.ErrWriter = os.Stderr

	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
