package cli

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/rpc"
)

// completeVMs completes VM names from the running daemon (never starting
// it: completion must stay instant).
func (a *app) completeVMs(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	layout, err := a.layout()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var list api.VMList
	if err := rpc.NewClient(layout.DaemonSocket()).Call(ctx, api.MethodVMList, nil, &list); err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	seen := map[string]bool{}
	for _, a := range args {
		seen[a] = true
	}
	var names []string
	for _, vm := range list.VMs {
		if !seen[vm.Name] {
			names = append(names, vm.Name+"\t"+string(vm.State))
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// completeNames completes image or kernel names from the running daemon.
func (a *app) completeNames(method string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		layout, err := a.layout()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var names []string
		c := rpc.NewClient(layout.DaemonSocket())
		switch method {
		case api.MethodImageList:
			var res api.ImageList
			if c.Call(ctx, method, nil, &res) == nil {
				for _, i := range res.Images {
					names = append(names, i.Name)
				}
			}
		case api.MethodKernelList:
			var res api.KernelList
			if c.Call(ctx, method, nil, &res) == nil {
				for _, k := range res.Kernels {
					names = append(names, k.Name)
				}
			}
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// withCompletion sets live completion on every subcommand that takes VM,
// image or kernel names (by the first word of its Use line).
func (a *app) withCompletion(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.ValidArgsFunction != nil || c.Parent() == nil {
			return
		}
		use := c.Use
		parent := c.Parent().Name()
		switch {
		case parent == "vm" && (containsWord(use, "VM") || containsWord(use, "VM...")):
			c.ValidArgsFunction = a.completeVMs
		case parent == "workspace" && containsWord(use, "VM"):
			c.ValidArgsFunction = a.completeVMs
		case parent == "image" && (containsWord(use, "NAME") || containsWord(use, "NAME...")):
			c.ValidArgsFunction = a.completeNames(api.MethodImageList)
		case parent == "kernel" && (containsWord(use, "NAME") || containsWord(use, "NAME...")):
			c.ValidArgsFunction = a.completeNames(api.MethodKernelList)
		}
	}
	walk(root)
}

func containsWord(s, w string) bool {
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ' ' {
			if s[start:i] == w {
				return true
			}
			start = i + 1
		}
	}
	return false
}
