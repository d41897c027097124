package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/sshconfig"
)

func (a *app) sshConfigCmd() *cobra.Command {
	var install, uninstall bool
	cmd := &cobra.Command{
		Use:   "ssh-config",
		Short: "Make plain `ssh NAME.vm` work",
		Long: `Print the ssh configuration banger keeps for its VMs: one Host block per
VM (address, HostKeyAlias) and a shared "Host *.vm" block (user root,
banger's managed key, banger's own known_hosts with strict checking,
keep-alives). The daemon rewrites the file as VMs come and go.

--install adds a marked Include block at the top of ~/.ssh/config (created
if missing) so plain ` + "`ssh NAME.vm`" + ` works; running it twice leaves one
block. --uninstall removes that block and restores the file byte for byte.
Without --install, ~/.ssh/config is never touched.`,
		Example: `  banger ssh-config              # print it
  banger ssh-config --install    # then: ssh dev.vm
  banger ssh-config --uninstall`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if install && uninstall {
				return fmt.Errorf("--install and --uninstall are exclusive")
			}
			home, err := os.UserHomeDir()
			if err != nil {
				return fmt.Errorf("find your home directory: %w", err)
			}
			sshDir := filepath.Join(home, ".ssh")
			if uninstall {
				changed, err := sshconfig.Uninstall(sshDir)
				if err != nil {
					return err
				}
				if changed {
					fmt.Fprintf(a.env.Stdout, "removed banger's Include from %s\n", sshconfig.ConfigPath(sshDir))
				} else {
					fmt.Fprintf(a.env.Stdout, "%s has no banger Include; nothing to do\n", sshconfig.ConfigPath(sshDir))
				}
				return nil
			}
			var res api.SSHConfig
			if err := a.call(cmd.Context(), api.MethodSSHConfig, nil, &res); err != nil {
				return err
			}
			if !install {
				fmt.Fprintf(a.env.Stdout, "# %s\n%s", res.Path, res.Text)
				return nil
			}
			changed, err := sshconfig.Install(sshDir, res.Path)
			if err != nil {
				return err
			}
			if changed {
				fmt.Fprintf(a.env.Stdout, "added an Include of %s to %s; `ssh NAME.vm` now works\n", res.Path, sshconfig.ConfigPath(sshDir))
			} else {
				fmt.Fprintf(a.env.Stdout, "%s already includes %s\n", sshconfig.ConfigPath(sshDir), res.Path)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&install, "install", false, "add the Include block to ~/.ssh/config")
	cmd.Flags().BoolVar(&uninstall, "uninstall", false, "remove the Include block from ~/.ssh/config")
	return cmd
}
