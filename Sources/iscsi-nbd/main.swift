import ISCSINBDCommand

await ISCSINBDRootCommand.runMain()
