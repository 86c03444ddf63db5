import ISCSINBDCommand

await ISCSINBDRootCommand.main()
